"""faust-streaming, made exactly-once by this project's transactional layer.

``transport`` is the layer: a faust transport (``broker="cronorch://host:port"``, registered
under faust's ``faust.transports`` entry point) whose consumer, producer and transaction
manager keep every send of an event inside the Kafka transaction of the event's source
partition. docs/exactly-once.md explains what it fixes in faust-streaming 0.15.3 and why.
"""
