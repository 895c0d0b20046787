"""sensorcast.stream — readings in: schema, validation, Kafka I/O, event-time windowing, archive, replay.

Must not import torch, ray, training or serving.
"""
