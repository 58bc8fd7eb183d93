"""The long-running processes: worker, tick producer, job runner, spawn sink, relay,
bootstrap, demo, and their shared start-up (``lifecycle``).
"""
