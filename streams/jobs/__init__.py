"""Maintenance jobs (pure): the registry, slot and retry decisions.

The job runner process lives in ``streams.processes.jobrunner``.
"""
