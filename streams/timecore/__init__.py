"""The time core (pure): local wall time ↔ instants, recurrence rules, cron.

Imports nothing but the standard library and ``streams.errors``; never reads the clock.
"""
