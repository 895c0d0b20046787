"""Model registry: versioned checkpoints under one location, a champion pointer, and lineage.

The root is a local folder or an object-store URI (`stream.storage`: file://, s3://, gs://), so every node
of a cluster reads the same registry. Layout:

    <root>/claims/v0001-<uuid>              who owns version number 1 (`Location.claim`)
    <root>/versions/v0001/model.pt          the checkpoint, its `version` field rewritten to "v0001"
    <root>/versions/v0001/record.json       kind, parent, data range, metrics, reason, sha256, fingerprint
    <root>/champion/00000001-<uuid>         who owns entry 1 of the champion log (its JSON inside)
    <root>/champion/00000001.json           entry 1: {"version", "at_ms", "reason"} (+ the version's record)

Designed for object stores, which have no rename and no atomic read-modify-write:
- **unique object names**: every writer creates new objects; nothing shared is ever rewritten. Numbers
  (versions, log entries) are claimed with `Location.claim`: write a uniquely named claim, list, and own the
  number only when no rival claim is there; racers that lose retry after a random pause.
- **the record is written last**: a version exists once its `record.json` exists. A registration that
  dies between the model and the record leaves an invisible version whose number stays claimed (never
  reused). Numbers are the lowest unclaimed ones, so versions stay consecutive even when racers collide.
- **the champion pointer is an append-only log**: each promotion claims the next entry number and then
  writes its entry; the champion is the newest entry, `history()` all of them in order. Two concurrent
  promoters cannot corrupt it: both entries exist, in the order their numbers were claimed. A promoter
  dying between claim and entry leaves a gap in the numbering, never a torn pointer.

`champion()` costs one listing and one read (entries and records never change once written, so a
`Registry` keeps those it has read). Serving follows the champion; retraining registers a new version
(parent = the champion it started from) and promotes it when it beats the champion. Checkpoints that fail
verification are refused with `RegistryError`; storage failures propagate as `StorageError`.
"""

from __future__ import annotations

import builtins
import json
import random
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from stream.config import StorageSettings
from stream.storage import Location, StorageError, open_location
from training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

CLAIM_ATTEMPTS = 60
_VERSION = re.compile(r"^v(\d{4,})$")
_VERSION_CLAIM = re.compile(r"^v(\d{4,})-")
_ENTRY = re.compile(r"^(\d{8,})\.json$")
_ENTRY_CLAIM = re.compile(r"^(\d{8,})-")


class RegistryError(ValueError):
    """A registry operation cannot proceed; the message says why."""


@dataclass(frozen=True)
class ModelRecord:
    """One registered version; `uri` is its checkpoint object (open it with `load_checkpoint`)."""

    version: str
    kind: str
    uri: str
    parent: str | None
    created_ms: int
    network_fingerprint: str
    sha256: str
    code_version: str
    data_range: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    reason: str = ""


def _number(pattern: re.Pattern[str], name: str) -> int | None:
    m = pattern.match(name)
    return int(m.group(1)) if m else None


class Registry:
    """The registry at `root` (a folder or URI); `storage` says how `s3://` roots are reached."""

    def __init__(self, root: str | Path | Location, storage: StorageSettings | None = None) -> None:
        self.root = open_location(root, storage)
        self.storage = storage
        self._versions = self.root / "versions"
        self._claims = self.root / "claims"
        self._log = self.root / "champion"
        self._read: dict[str, dict[str, Any]] = {}  # path → JSON of write-once objects already read

    def __repr__(self) -> str:
        return f"Registry({self.root.uri!r})"

    # -- reading ---------------------------------------------------------------------------------------
    def _json(self, loc: Location) -> dict[str, Any]:
        """A record or log entry: written once and never changed, so read once per Registry."""
        if loc.path not in self._read:
            self._read[loc.path] = json.loads(loc.read_text())
        return self._read[loc.path]

    def _as_record(self, data: dict[str, Any]) -> ModelRecord:
        # the model's URI as seen through this root: a registry copied elsewhere still points at its own files
        return ModelRecord(**{**data, "uri": (self._versions / data["version"] / "model.pt").uri})

    def _record(self, version: str) -> ModelRecord:
        return self._as_record(self._json(self._versions / version / "record.json"))

    def show(self, version: str) -> ModelRecord:
        if _VERSION.match(version):
            try:
                return self._record(version)
            except StorageError as exc:
                if not isinstance(exc.__cause__, FileNotFoundError):
                    raise
        known = ", ".join(r.version for r in self.list()) or "none"
        raise RegistryError(f"no version {version!r} in {self.root.uri} (known: {known})")

    def list(self) -> builtins.list[ModelRecord]:
        """All versions that have a record, oldest first."""
        numbers = sorted(
            n
            for f in self._versions.files(recursive=True)
            if f.name == "record.json" and (n := _number(_VERSION, f.parent.name)) is not None
        )
        return [self._record(f"v{n:04d}") for n in numbers]

    def _entries(self) -> builtins.list[Location]:
        """The champion log's entries, oldest first (one listing)."""
        found = [
            (n, f) for f in self._log.files(recursive=False) if (n := _number(_ENTRY, f.name)) is not None
        ]
        return [f for _, f in sorted(found, key=lambda nf: nf[0])]

    def champion(self) -> ModelRecord | None:
        """The newest champion log entry's version, or None before the first promotion."""
        entries = self._entries()
        if not entries:
            return None
        return self._as_record(self._json(entries[-1])["record"])  # the entry carries the record: no 2nd read

    def champion_uri(self) -> str:
        """The champion's checkpoint URI; `RegistryError` when nothing was promoted yet."""
        record = self.champion()
        if record is None:
            raise RegistryError(f"registry {self.root.uri} has no champion yet: promote a version first")
        return record.uri

    def history(self) -> builtins.list[dict[str, Any]]:
        """Every promotion (rollbacks included), oldest first: {"version", "at_ms", "reason"}."""
        return [
            {k: entry[k] for k in ("version", "at_ms", "reason")}
            for entry in map(self._json, self._entries())
        ]

    # -- writing ---------------------------------------------------------------------------------------
    def _claim(self, slot: Callable[[], Location], data: bytes = b"") -> Location:
        """Claim the slot `slot()` names (recomputed on each try); racers that lose retry after a pause."""
        for attempt in range(CLAIM_ATTEMPTS):
            target = slot()
            if target.claim(data) is not None:
                return target
            # random, growing pauses: racers that all lost would otherwise collide again in lockstep
            time.sleep(random.uniform(0, 0.005 * 2 ** min(attempt, 7)))
        raise RegistryError(
            f"could not claim a number in {self.root.uri} after {CLAIM_ATTEMPTS} tries: too many concurrent "
            "writers; try again"
        )

    def _free_version(self) -> Location:
        """The lowest version number with neither a claim nor any object under versions/."""
        claimed = [_number(_VERSION_CLAIM, f.name) for f in self._claims.files(recursive=False)]
        written = [_number(_VERSION, f.parent.name) for f in self._versions.files(recursive=True)]
        taken = {n for n in claimed + written if n is not None}
        free = next(n for n in range(1, len(taken) + 2) if n not in taken)
        return self._claims / f"v{free:04d}"

    def _next_entry(self) -> Location:
        """One past the highest champion log number, claimed or written: log order is claim order."""
        names = [f.name for f in self._log.files(recursive=False)]
        numbers = [_number(_ENTRY, name) or _number(_ENTRY_CLAIM, name) or 0 for name in names]
        highest = max(numbers, default=0)
        return self._log / f"{highest + 1:08d}"

    def register(
        self,
        checkpoint: str | Path | Location | bytes,
        *,
        parent: str | None = "champion",
        reason: str = "",
        metrics: dict[str, Any] | None = None,
    ) -> ModelRecord:
        """Copy a verified checkpoint in as the next version; `parent="champion"` records the current one.

        `checkpoint` is a path, a URI (opened with this registry's storage settings) or the bytes."""
        label = "checkpoint bytes" if isinstance(checkpoint, bytes) else str(checkpoint)
        try:
            ckpt = load_checkpoint(checkpoint, storage=self.storage)
        except CheckpointError as exc:
            cause = exc.__cause__
            if isinstance(cause, StorageError) and not isinstance(cause.__cause__, FileNotFoundError):
                raise cause from cause.__cause__  # the store failed, not the checkpoint: retry later
            raise RegistryError(f"refusing to register {label}: {exc}") from exc
        if parent == "champion":
            current = self.champion()
            parent = current.version if current else None
        known = (
            parent is not None
            and _VERSION.match(parent)
            and (self._versions / parent / "record.json").is_file()
        )
        if parent is not None and not known:
            raise RegistryError(f"parent version {parent!r} is not in the registry at {self.root.uri}")
        version = self._claim(self._free_version).name
        ckpt.version = version
        if metrics:
            ckpt.metrics = {**ckpt.metrics, **metrics}
        uri = save_checkpoint(ckpt, self._versions / version / "model.pt")
        record = ModelRecord(
            version=version,
            kind=ckpt.kind,
            uri=uri,
            parent=parent,
            created_ms=int(time.time() * 1000),
            network_fingerprint=ckpt.network_fingerprint,
            sha256=ckpt.sha256,
            code_version=ckpt.code_version,
            data_range=ckpt.data_range,
            metrics=ckpt.metrics,
            reason=reason,
        )
        # last: the version exists from here on
        (self._versions / version / "record.json").write_text(json.dumps(asdict(record), indent=1))
        return record

    def promote(self, version: str, *, reason: str) -> ModelRecord:
        """Make `version` the champion, recording why (e.g. 'val MAE 3.1 < champion 3.4')."""
        record = self.show(version)
        entry = {
            "version": version,
            "at_ms": int(time.time() * 1000),
            "reason": reason,
            "record": asdict(record),
        }
        data = json.dumps(entry, indent=1).encode()
        slot = self._claim(self._next_entry, data)
        (self._log / f"{slot.name}.json").write_bytes(data)
        return record

    def rollback(self, *, reason: str) -> ModelRecord:
        """Make the champion before the current one champion again."""
        history = self.history()
        current = history[-1]["version"] if history else None
        previous = next((h["version"] for h in reversed(history) if h["version"] != current), None)
        if previous is None:
            raise RegistryError(f"registry {self.root.uri} has no earlier champion to roll back to")
        return self.promote(previous, reason=f"rollback from {current}: {reason}")
