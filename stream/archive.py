"""The archive: sealed steps and late readings as Parquet files, the durable record offsets commit against.

`root` is a local folder or an object-store URI (`s3://bucket/prefix`; see `stream.storage`): the same
files either way, readable by pandas/pyarrow straight from the URI. Layout under `root`::

    network.toml                                                          # the network the steps belong to

    steps/date=YYYY-MM-DD/part-<first_step_ts>-<last_step_ts>.parquet   # one file per append and UTC day
    late/date=YYYY-MM-DD/part-<first_ts>-<last_ts>-<uuid>.parquet      # the late log

Steps are stored long: one row per (step, sensor, feature) with columns `step_ts` (int64 ms), `sensor`
(string), `feature` (string), `value` (float32, the sealed value incl. last-observation fill) and
`observed` (bool, the mask); `pandas.read_parquet(root + "/steps")` reads them all. A file appears whole
or not at all (`Location.write_bytes`: one PUT on an object store — which has no rename, so every name is
written once —, a hidden temporary file renamed into place on a local disk, whose leftovers are removed
when a writer opens).

Appends are idempotent: steps at or before `last_step()` are skipped, and `last_step()` is recovered from
the file names after a restart — it is the `resume_after_step` of the windower. The late log is not
idempotent (a replay after a crash may log a late reading twice); it is an audit trail, not model input.

One writer per root. No Kafka, no clock.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from stream.config import StorageSettings
from stream.network import Network
from stream.storage import Location, open_location
from stream.window import LateReading, SealedStep

_PART = re.compile(r"^part-(\d+)-(\d+)\.parquet$")
LATE_COLUMNS = ("sensor", "feature", "ts", "value", "step_ts", "partition", "offset")
NETWORK_FILE = "network.toml"
OPEN_DAY_PARTS = 48  # files of the open day that are merged into one (4 hours of 5-minute steps)
# A compaction (in this process or another) may delete files between a listing and the read: list again.
# Each retry means one more compaction finished in between, so a few are plenty.
READ_ATTEMPTS = 5


class ArchiveMismatch(RuntimeError):
    """The archive holds another network's steps."""


def utc_day(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d")


class Archive:
    """Parquet archive of sealed steps and late readings for one network; see the module docstring."""

    def __init__(
        self, root: str | Path | Location, network: Network, storage: StorageSettings | None = None
    ) -> None:
        self.root = open_location(root, storage)
        self.network = network
        self.steps_dir = self.root / "steps"
        self.late_dir = self.root / "late"
        self._files: list[tuple[int, int, Location]] = []  # (first, last, file), sorted
        self._writing = False
        self._scan()

    def claim(self) -> Archive:
        """Record the network beside the steps (retraining reads it); refuse another network's archive."""
        theirs = read_network(self.root)
        if theirs is None:
            (self.root / NETWORK_FILE).write_text(self.network.dumps())
        elif theirs.fingerprint() != self.network.fingerprint():
            raise ArchiveMismatch(
                f"archive {self.root} belongs to network {theirs.name!r} ({theirs.n_sensors} sensors), "
                f"not {self.network.name!r} ({self.network.n_sensors}): use another archive root"
            )
        return self

    def _start_writing(self) -> None:
        """Before this object's first write: remove temp files a crashed local writer left (one writer per
        root). Readers never do this — they would delete a live writer's file before its rename."""
        if self._writing:
            return
        self._writing = True
        if self.root.is_local:
            for tmp in Path(self.root.path).glob("*/date=*/.*.tmp"):
                tmp.unlink(missing_ok=True)  # a crash between write and rename

    def _scan(self) -> None:
        files = []
        for loc in self.steps_dir.files():
            m = _PART.match(loc.name)
            if m:
                files.append((int(m.group(1)), int(m.group(2)), loc))
        self._files = sorted(files, key=lambda f: (f[0], f[1]))

    def last_step(self) -> int | None:
        """step_ts of the newest archived step, None for an empty archive."""
        return max((last for _, last, _ in self._files), default=None)

    # -- sealed steps ----------------------------------------------------------------------------------

    def append(self, steps: Sequence[SealedStep]) -> None:
        """Write the steps newer than `last_step()`, one file per UTC day; older ones are skipped."""
        self._start_writing()
        last = self.last_step()
        todo = sorted((s for s in steps if last is None or s.step_ts > last), key=lambda s: s.step_ts)
        by_day: dict[str, list[SealedStep]] = {}
        for s in todo:
            by_day.setdefault(utc_day(s.step_ts), []).append(s)
        for day, group in by_day.items():
            first_ts, last_ts = group[0].step_ts, group[-1].step_ts
            loc = self.steps_dir / f"date={day}" / f"part-{first_ts}-{last_ts}.parquet"
            _write(self._steps_table(group), loc)
            self._files.append((first_ts, last_ts, loc))
        self._files.sort(key=lambda f: (f[0], f[1]))

    def _steps_table(self, steps: Sequence[SealedStep]) -> pa.Table:
        n, f = self.network.n_sensors, self.network.n_features
        t = len(steps)
        values = np.stack([s.values for s in steps]).reshape(-1)  # [T, N, F] -> [T * N * F]
        mask = np.stack([s.mask for s in steps]).reshape(-1)
        step_ts = np.repeat(np.array([s.step_ts for s in steps], dtype=np.int64), n * f)
        sensor = np.tile(np.repeat(np.arange(n, dtype=np.int32), f), t)
        feature = np.tile(np.arange(f, dtype=np.int32), n * t)
        return pa.table(
            {
                "step_ts": pa.array(step_ts, type=pa.int64()),
                "sensor": _strings(sensor, self.network.sensors),
                "feature": _strings(feature, self.network.feature_names),
                "value": pa.array(values.astype(np.float32, copy=False), type=pa.float32()),
                "observed": pa.array(mask.astype(bool)),
            }
        )

    def read(
        self, start_ms: int | None = None, end_ms: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Archived steps with `start_ms <= step_ts < end_ms` (either bound optional), in network order.

        Returns `step_ts` int64 `[T]`, `values` float32 `[T, N, F]`, `mask` uint8 `[T, N, F]`. Sensors or
        features the network no longer has are dropped; ones it gained read as NaN / 0.
        """
        lo = -(2**62) if start_ms is None else start_ms
        hi = 2**62 if end_ms is None else end_ms
        n, f = self.network.n_sensors, self.network.n_features
        for attempt in range(READ_ATTEMPTS):
            try:
                table = self._read_table(lo, hi)
                break
            except FileNotFoundError:  # a compaction removed files since this object listed them
                if attempt == READ_ATTEMPTS - 1:
                    raise
                self._scan()
        if table is None:
            return np.zeros(0, np.int64), np.zeros((0, n, f), np.float32), np.zeros((0, n, f), np.uint8)
        step = table.column("step_ts").to_numpy()
        keep = (step >= lo) & (step < hi)
        step = step[keep]
        si = _indices(table.column("sensor"), self.network.sensor_index)[keep]
        fi = _indices(table.column("feature"), self.network.feature_index)[keep]
        value = table.column("value").to_numpy()[keep]
        observed = table.column("observed").to_numpy(zero_copy_only=False)[keep]
        step_ts, ti = np.unique(step, return_inverse=True)
        known = (si >= 0) & (fi >= 0)
        values = np.full((len(step_ts), n, f), np.nan, dtype=np.float32)  # [T, N, F]
        mask = np.zeros((len(step_ts), n, f), dtype=np.uint8)  # [T, N, F]
        values[ti[known], si[known], fi[known]] = value[known]
        mask[ti[known], si[known], fi[known]] = observed[known]
        return step_ts, values, mask

    def _read_table(self, lo: int, hi: int) -> pa.Table | None:
        paths = [loc.path for first, last, loc in self._files if last >= lo and first < hi]
        if not paths:
            return None
        # one dataset over the files: an object store's GETs run concurrently, not one after the other
        return pads.dataset(paths, filesystem=self.root.fs, format="parquet").to_table()

    def refresh(self) -> None:
        """List the files again (after another `Archive` on the same root compacted them)."""
        self._scan()

    def _by_day(self) -> tuple[str, dict[str, list[tuple[int, int, Location]]]]:
        """(the open day — that of the newest step —, the files of each UTC day)."""
        by_day: dict[str, list[tuple[int, int, Location]]] = {}
        for entry in self._files:
            by_day.setdefault(entry[2].parent.name.removeprefix("date="), []).append(entry)
        last = self.last_step()
        return ("" if last is None else utc_day(last)), by_day

    def needs_compaction(self) -> bool:
        """Whether a closed UTC day holds several files, or the open day `OPEN_DAY_PARTS` (no I/O)."""
        today, by_day = self._by_day()
        return any(len(files) >= (OPEN_DAY_PARTS if day == today else 2) for day, files in by_day.items())

    def compact(self) -> int:
        """Merge each closed UTC day's files into one (a day is closed once a later day has a step), and the
        open day's once it has `OPEN_DAY_PARTS`, so reading a range costs a few requests, not one per step;
        returns the files removed. Appends go on meanwhile: they only add files after the merged range.

        The merged file is written before its parts are deleted, so readers see every step throughout (at
        worst twice, which `read` tolerates; a reader whose listing lost a file lists again). A crash in
        between leaves parts inside the merged file's range: the next call deletes them."""
        today, by_day = self._by_day()
        removed = 0
        for day, files in by_day.items():
            covered = [e for e in files if any(o is not e and o[0] <= e[0] and e[1] <= o[1] for o in files)]
            parts = [e for e in files if e not in covered]
            merge = len(parts) >= (OPEN_DAY_PARTS if day == today else 2)
            if merge:
                first, last_ts = parts[0][0], max(e[1] for e in parts)
                merged = self.steps_dir / f"date={day}" / f"part-{first}-{last_ts}.parquet"
                table = pads.dataset([e[2].path for e in parts], filesystem=self.root.fs, format="parquet")
                _write(table.to_table(), merged)
                covered = files
            for e in covered:
                e[2].delete()
                self._files.remove(e)
                removed += 1
            if merge:
                self._files.append((first, last_ts, merged))
        self._files.sort(key=lambda f: (f[0], f[1]))
        return removed

    # -- late log --------------------------------------------------------------------------------------

    def append_late(self, late: Sequence[LateReading]) -> None:
        """Log late readings (as returned by the windower) under `late/`, one file per UTC day."""
        if not late:
            return
        self._start_writing()
        cols = list(zip(*late, strict=True))  # one tuple per LateReading field
        data = dict(zip(LATE_COLUMNS, cols, strict=True))
        step_ts = np.array(data["step_ts"], dtype=np.int64)
        days = np.array([utc_day(int(s)) for s in step_ts])
        for day in np.unique(days).tolist():
            sel = days == day
            ts = np.array(data["ts"], dtype=np.int64)[sel]
            table = pa.table(
                {
                    "sensor": _strings(np.array(data["sensor"], dtype=np.int32)[sel], self.network.sensors),
                    "feature": _strings(
                        np.array(data["feature"], dtype=np.int32)[sel], self.network.feature_names
                    ),
                    "ts": pa.array(ts, type=pa.int64()),
                    "value": pa.array(np.array(data["value"], dtype=np.float64)[sel], type=pa.float64()),
                    "step_ts": pa.array(step_ts[sel], type=pa.int64()),
                    "partition": pa.array(np.array(data["partition"], dtype=np.int32)[sel], type=pa.int32()),
                    "offset": pa.array(np.array(data["offset"], dtype=np.int64)[sel], type=pa.int64()),
                }
            )
            name = f"part-{ts.min()}-{ts.max()}-{uuid.uuid4().hex[:12]}.parquet"
            _write(table, self.late_dir / f"date={day}" / name)

    def read_late(self) -> pd.DataFrame:
        """The whole late log, oldest first (empty frame with the columns when there is none)."""
        paths = [loc.path for loc in self.late_dir.files() if loc.name.startswith("part-")]
        if not paths:
            return pd.DataFrame({c: pd.Series(dtype=object) for c in LATE_COLUMNS})
        frame = pads.dataset(paths, filesystem=self.root.fs, format="parquet").to_table().to_pandas()
        return frame.sort_values(["ts", "partition", "offset"], kind="stable").reset_index(drop=True)


def _strings(indices: np.ndarray, names: Sequence[str]) -> pa.Array:
    """Plain string column from indices into `names` (built as a dictionary, then decoded)."""
    return pa.DictionaryArray.from_arrays(pa.array(indices, type=pa.int32()), pa.array(list(names))).cast(
        pa.string()
    )


def _indices(column: pa.ChunkedArray, index: Mapping[str, int]) -> np.ndarray:
    """Network indices of a string column (-1 where the network lacks the name)."""
    encoded = column.combine_chunks().dictionary_encode()
    lookup = np.array([index.get(name, -1) for name in encoded.dictionary.to_pylist()], dtype=np.int64)
    return lookup[encoded.indices.to_numpy(zero_copy_only=False)]


def _write(table: pa.Table, loc: Location) -> None:
    """Serialise to Parquet in memory and write the file whole (see `Location.write_bytes`)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    loc.write_bytes(sink.getvalue().to_pybytes())


def read_network(root: Location) -> Network | None:
    """The network recorded in an archive, None when it has none yet."""
    loc = root / NETWORK_FILE
    return Network.loads(loc.read_text(), loc) if loc.exists() else None
