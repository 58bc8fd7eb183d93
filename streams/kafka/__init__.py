"""The Kafka adapter: the aiokafka client wrapper and the exactly-once partition engine.
"""
