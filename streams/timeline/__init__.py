"""The timeline (pure): planning of reminders, digests and spawns, and per-partition state.

No Kafka, PostgreSQL or metrics here; time comes in as ticks.
"""
