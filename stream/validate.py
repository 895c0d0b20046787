"""Vectorised validation of a parsed v1 batch message (the fast path of `stream.schema.Decoder`).

Given the header fields already checked by the decoder (`v`, integer `ts` in range, `values` an object),
this turns `sensors` and the aligned value arrays into columnar numpy readings with one numpy pass over
all features. A structurally broken batch (sensors not a list of strings, a value array that is not a list
or not as long as `sensors`, nothing in it) is rejected whole; bad individual values are rejected per
reading. Problems are plain `(reason, detail, n_readings)` tuples; the decoder wraps them.

No I/O, no JSON parsing, no knowledge of windows.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import chain, repeat
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
    names: list[str] = []
    cols: list[list[Any]] = []
    specs: list[tuple[int, float, float]] = []
    for name, col in values.items():
        spec = features.get(name)
        if spec is None:
            n_present = n - col.count(None)
            if n_present:
                detail = f"feature {name!r} is not in network {network_name!r}"
                problems.append(("unknown_feature", detail, n_present))
            continue
        names.append(name)
        cols.append(col)
        specs.append(spec)
    if not cols:
        return None, problems
    if set(map(type, chain.from_iterable(cols))) <= _NUMERIC:
        arr = np.array(cols, dtype=np.float64)  # [k, n], null -> NaN (orjson never yields NaN itself)
    else:
        rows = []
        for name, col in zip(names, cols, strict=True):
            if set(map(type, col)) <= _NUMERIC:
                rows.append(col)
                continue
            wrong = [x for x in col if type(x) not in _NUMERIC]
            detail = f"values[{name!r}] holds {len(wrong)} non-numbers, e.g. {wrong[0]!r:.40}"
            problems.append(("wrong_type", detail, len(wrong)))
            rows.append([x if type(x) in _NUMERIC else None for x in col])
        arr = np.array(rows, dtype=np.float64)
    ok = ~np.isnan(arr)  # [k, n]
    n_unknown_sensor = 0
    if not all_known:
        n_unknown_sensor = int((ok & ~known).sum())
        ok &= known
    lo = np.array([sp[1] for sp in specs])
    hi = np.array([sp[2] for sp in specs])
    if np.isfinite(lo).any() or np.isfinite(hi).any():
        outside = ok & ((arr < lo[:, None]) | (arr > hi[:, None]))  # [k, n]
        if outside.any():
            for j in np.flatnonzero(outside.any(axis=1)).tolist():
                n_out = int(outside[j].sum())
                first = int(np.flatnonzero(outside[j])[0])
                detail = (
                    f"{n_out} {names[j]} values outside [{specs[j][1]}, {specs[j][2]}], "
                    f"e.g. {sensors[first]}={arr[j, first]}"
                )
                problems.append(("out_of_range", detail, n_out))
            ok &= ~outside
    fidx = np.array([sp[0] for sp in specs], dtype=np.int16)  # [k]
    if n_unknown_sensor:
        first = sensors[int(np.flatnonzero(~known)[0])]
        detail = (
            f"{n_unknown_sensor} readings name sensors not in network {network_name!r}, e.g. {first!r:.40}"
        )
        problems.append(("unknown_sensor", detail, n_unknown_sensor))
    if ok.all():  # feature-major: every sensor of the first feature, then the next
        value = arr.reshape(-1)
        sensor = np.concatenate([sidx] * len(specs)) if len(specs) > 1 else sidx
        feature = np.repeat(fidx, n)
    else:
        r, c = np.nonzero(ok)
        if not len(r):
            return None, problems
        value, sensor, feature = arr[r, c], sidx[c], fidx[r]
    return (np.full(len(value), ts, dtype=np.int64), sensor, feature, value), problems
