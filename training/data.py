"""Model inputs from a `SensorDataset`: time features, windows and the field's chronological splits.

No I/O and no models; the readers live in `stream.datasets`.
"""

from __future__ import annotations

import numpy as np

DAY_MS = 86_400_000


def time_features(step_ts: np.ndarray) -> np.ndarray:
    """`step_ts [...]` int64 epoch ms UTC -> `[..., 2]` float32.

    Feature 0 is the time of day in [0, 1), feature 1 the day of week 0..6 (Monday = 0).
    """
    ts = np.asarray(step_ts, dtype=np.int64)
    tod = (ts % DAY_MS) / DAY_MS
    dow = (ts // DAY_MS + 3) % 7  # 1970-01-01 was a Thursday
    return np.stack([tod, dow], axis=-1).astype(np.float32)
