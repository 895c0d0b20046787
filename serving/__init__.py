"""sensorcast.serving — the composition root: Ray forecaster actors, Redis sink, embedded runtime, CLI.

May import `stream` and `training`.
"""
