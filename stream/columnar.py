"""Columnar decoding of many single-reading messages at once: the ingest hot path.

`Decoder.decode` validates one message at a time in Python. A poll brings hundreds of single
readings per partition, so `SinglesDecoder` decodes them with msgspec into typed structs (JSON syntax,
the message shape, the schema version and the value types are checked in C), gathers the fields into
numpy columns and checks sensors, timestamps and value ranges for the whole poll at once.

It only ever accepts: a message it cannot vouch for — anything that is not a clean single reading, such
as a batch message, a dead letter to be, or a tombstone — comes back as "not taken" and goes through
`Decoder.decode`, which gives the reason. So both paths accept exactly the same messages with the
same readings; `tests/test_ingest_many.py` and `tests/test_columnar.py` hold them to it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from operator import attrgetter
from typing import Any, Literal

import msgspec
import numpy as np

from stream.network import Network

__all__ = ["Singles", "SinglesDecoder"]

# What msgspec raises on input it does not take: bad JSON or shape (MsgspecError), bytes that are not
# UTF-8 (ValueError), a tombstone (TypeError), nesting too deep (RecursionError).
_NOT_TAKEN = (msgspec.MsgspecError, ValueError, TypeError, RecursionError)


class Singles:
    """Columns over a list of messages: `taken [m]` (a clean single reading), and for those `ts [m]`,
    `sensor [m]` (network index) and `values [m, F]` (float64, NaN = not in the message or null)."""

    __slots__ = ("sensor", "taken", "ts", "values")

    def __init__(self, taken: np.ndarray, ts: np.ndarray, sensor: np.ndarray, values: np.ndarray) -> None:
        self.taken = taken
        self.ts = ts
        self.sensor = sensor
        self.values = values


class SinglesDecoder:
    """Decodes single-reading v1 messages in bulk against a `Network`; see the module docstring."""

    def __init__(self, network: Network, *, max_message_bytes: int) -> None:
        names = [f.name for f in network.features]
        n_feat = len(names)
        # Feature names need not be identifiers: fields f0..fk carry them by `rename`.
        values_type = msgspec.defstruct(
            "Values",
            [(f"f{j}", float | None, None) for j in range(n_feat)],
            rename={f"f{j}": name for j, name in enumerate(names)},
            forbid_unknown_fields=True,  # an unknown feature: not taken, the slow path names it
            gc=False,  # floats and None only: no cycles, so no work for the garbage collector
        )
        single_type = msgspec.defstruct(
            "Single",
            [
                ("v", Literal[1]),
                ("ts", int),
                ("sensor", str),
                ("values", values_type),
                # A batch field beside `sensor` (both kinds): any value fails to decode, so not taken.
                ("sensors", msgspec.UnsetType, msgspec.UNSET),
            ],
            gc=False,
        )
        self._decode = msgspec.json.Decoder(single_type).decode
        self._placeholder = single_type(v=1, ts=0, sensor="", values=values_type())
        self._getters = [attrgetter(f"f{j}") for j in range(n_feat)]
        self._n_features = n_feat
        self._sensor_index = network.sensor_index
        self._lo = np.array([f.min for f in network.features], dtype=np.float64)  # [F]
        self._hi = np.array([f.max for f in network.features], dtype=np.float64)  # [F]
        self.max_message_bytes = max_message_bytes

    def decode(self, raws: Sequence[bytes | None], min_ts_ms: int, max_ts_ms: int) -> Singles:
        """Columns for `raws`; a message is taken only when it is a well-formed single reading of a known
        sensor, with `min_ts_ms <= ts <= max_ts_ms`, at least one value, every value finite and in range."""
        m = len(raws)
        limit = self.max_message_bytes
        size: Callable[[Any], int] = len  # raises TypeError on a tombstone (None), as wanted
        try:
            too_big = max(map(size, raws)) > limit
        except TypeError:  # a tombstone (None) among them
            too_big = True
        if too_big:  # not even parsed here: the per-message path rejects them unread
            raws = [r if r is not None and len(r) <= limit else None for r in raws]
        decode: Callable[[Any], Any] = self._decode  # raises one of _NOT_TAKEN on a tombstone
        try:  # the usual case: every message decodes
            docs: list[Any] = list(map(decode, raws))
            taken = np.ones(m, dtype=bool)
        except _NOT_TAKEN:  # again one by one, None where a message is not a clean single reading
            docs = [_try(decode, r) for r in raws]
            taken = np.array([d is not None for d in docs], dtype=bool)
            if not taken.any():
                return Singles(
                    taken, np.zeros(m, np.int64), np.zeros(m, np.int64), np.zeros((m, self._n_features))
                )
            hole = self._placeholder  # keeps one row per message; never taken
            docs = [d if d is not None else hole for d in docs]
        ts_list = [d.ts for d in docs]
        try:
            ts = np.array(ts_list, dtype=np.int64)
        except OverflowError:  # an integer past int64: clamp it, the bounds check below rejects it
            ts = np.array([min(max(t, -(2**63)), 2**63 - 1) for t in ts_list], dtype=np.int64)
        sensor = np.fromiter(
            map(self._sensor_index.get, [d.sensor for d in docs], [-1] * m), dtype=np.int64, count=m
        )
        vs = [d.values for d in docs]
        values = np.array([list(map(g, vs)) for g in self._getters], dtype=np.float64).T  # [m, F] view
        present = ~np.isnan(values)  # [m, F]
        # NaN compares False, so absent values pass; inf fails the finiteness test.
        bad_value = present & ~((values >= self._lo) & (values <= self._hi) & np.isfinite(values))
        taken &= (sensor >= 0) & (ts >= min_ts_ms) & (ts <= max_ts_ms)
        taken &= present.any(axis=1) & ~bad_value.any(axis=1)
        return Singles(taken, ts, sensor, values)


def _try(decode: Any, raw: bytes | None) -> Any:
    if raw is None:
        return None
    try:
        return decode(raw)
    except _NOT_TAKEN:
        return None
