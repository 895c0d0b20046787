"""sensorcast.serving — the composition root: Ray forecaster actors, Redis sink, embedded runtime, CLI.

May import `stream` and `training`. Importing it makes the C library's malloc Arrow's default memory pool.
"""

import os

# Arrow allocates the archive's Parquet writes and compactions (every few seconds while serving) from its
# default pool, and pyarrow's default, mimalloc, kept committing more of its 1 GiB arena: the serving
# process grew 12-23 MB/min without levelling in benchmarks/soak.py (207 sensors, 10 steps/s), +0.3 MB/min
# with malloc. pyarrow reads it once, when first imported, so `serving` must be imported before it (as
# the `sensorcast` entry point is; the soak records the pool it ran with). A value set by the user wins.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
