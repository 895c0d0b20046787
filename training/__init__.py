"""sensorcast.training — models, datasets, Ray Train training, evaluation, checkpoints and the registry.

May import `stream`; must not import `serving`. Ray is imported only by the Ray Train entry point.
"""
