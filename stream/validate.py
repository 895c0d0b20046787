"""Vectorised validation of a parsed v1 batch message (the fast path of `stream.schema.Decoder`).

Given the header fields already checked by the decoder (`v`, integer `ts` in range, `values` an object),
this turns `sensors` and the aligned value arrays into columnar numpy readings with one numpy pass per
feature. A structurally broken batch (sensors not a list of strings, a value array that is not a list
or not as long as `sensors`, nothing in it) is rejected whole; bad individual values are rejected per
reading. Problems are plain `(reason, detail, n_readings)` tuples; the decoder wraps them.

No I/O, no JSON parsing, no knowledge of windows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from itertools import repeat
from typing import Any

import numpy as np

Problem = tuple[str, str, int]
Columns = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]

_NUMERIC = frozenset({float, int, type(None)})


def validate_batch(
    network_name: str,
    sensor_index: Mapping[str, int],
    features: Mapping[str, tuple[int, float, float]],
    ts: int,
    sensors: Any,
    values: dict[str, Any],
) -> tuple[Columns | None, list[Problem]]:
    """Columns `(ts, sensor, feature, value)` of the valid readings, and the problems found.

    `features` maps a feature name to `(index, min, max)`. Returns `(None, [one problem])` when the
    batch is rejected whole.
    """
    claimed = max(1, (len(sensors) if type(sensors) is list else 1) * max(1, len(values)))
    if type(sensors) is not list:
        return None, [("wrong_type", f"'sensors' is a {type(sensors).__name__}, not a list", claimed)]
    n = len(sensors)
    if n == 0 or not values:
        what = "'sensors' is an empty list" if n == 0 else "'values' is an empty object"
        return None, [("empty", what, claimed)]
    if set(map(type, sensors)) != {str}:
        first = next(s for s in sensors if type(s) is not str)
        return None, [("wrong_type", f"'sensors' holds a {type(first).__name__}; ids are strings", claimed)]
    for name, col in values.items():
        if type(col) is not list:
            return None, [("wrong_type", f"values[{name!r}] is a {type(col).__name__}, not a list", claimed)]
        if len(col) != n:
            detail = (
                f"values[{name!r}] has {len(col)} entries for {n} sensors (truncated or misaligned batch)"
            )
            return None, [("length_mismatch", detail, claimed)]

    sidx = np.fromiter(map(sensor_index.get, sensors, repeat(-1, n)), dtype=np.int32, count=n)  # [n]
    known = sidx >= 0
    all_known = bool(known.all())
    problems: list[Problem] = []
    out_s: list[np.ndarray] = []
    out_f: list[np.ndarray] = []
    out_v: list[np.ndarray] = []
    n_unknown_sensor = 0
    for name, col in values.items():
        spec = features.get(name)
        if spec is None:
            n_present = n - col.count(None)
            if n_present:
                detail = f"feature {name!r} is not in network {network_name!r}"
                problems.append(("unknown_feature", detail, n_present))
            continue
        fi, lo, hi = spec
        if set(map(type, col)) <= _NUMERIC:
            arr = np.array(col, dtype=np.float64)  # [n], null -> NaN (orjson never yields NaN itself)
        else:
            wrong = [x for x in col if type(x) not in _NUMERIC]
            detail = f"values[{name!r}] holds {len(wrong)} non-numbers, e.g. {wrong[0]!r:.40}"
            problems.append(("wrong_type", detail, len(wrong)))
            arr = np.array([x if type(x) in _NUMERIC else None for x in col], dtype=np.float64)
        ok = ~np.isnan(arr)
        if not all_known:
            n_unknown_sensor += int((ok & ~known).sum())
            ok &= known
        if not (math.isinf(lo) and math.isinf(hi)):
            outside = ok & ((arr < lo) | (arr > hi))
            n_out = int(outside.sum())
            if n_out:
                first = int(np.flatnonzero(outside)[0])
                detail = f"{n_out} {name} values outside [{lo}, {hi}], e.g. {sensors[first]}={arr[first]}"
                problems.append(("out_of_range", detail, n_out))
                ok &= ~outside
        if ok.all():
            out_s.append(sidx)
            out_v.append(arr)
        else:
            out_s.append(sidx[ok])
            out_v.append(arr[ok])
        out_f.append(np.full(len(out_v[-1]), fi, dtype=np.int16))
    if n_unknown_sensor:
        first = sensors[int(np.flatnonzero(~known)[0])]
        detail = (
            f"{n_unknown_sensor} readings name sensors not in network {network_name!r}, e.g. {first!r:.40}"
        )
        problems.append(("unknown_sensor", detail, n_unknown_sensor))
    if not out_v:
        return None, problems
    value = out_v[0] if len(out_v) == 1 else np.concatenate(out_v)
    sensor = out_s[0] if len(out_s) == 1 else np.concatenate(out_s)
    feature = out_f[0] if len(out_f) == 1 else np.concatenate(out_f)
    return (np.full(len(value), ts, dtype=np.int64), sensor, feature, value), problems
