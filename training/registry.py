"""Model registry: versioned checkpoints under one directory, a champion pointer, and lineage.

Layout (all JSON is human-readable; checkpoints are the self-describing files of `training.checkpoint`):

    <root>/versions/v0001/model.pt     the checkpoint, its `version` field rewritten to "v0001"
    <root>/versions/v0001/record.json  kind, parent, data range, metrics, reason, sha256, network fingerprint
    <root>/champion.json               {"version": ..., "history": [{"version", "at_ms", "reason"}, ...]}

Serving loads `champion_path()`; retraining registers a new version (parent = the champion it started from)
and promotes it when it beats the champion. Writes are atomic (temp file + rename). Local paths only.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


class RegistryError(ValueError):
    """A registry operation cannot proceed; the message says why."""


@dataclass(frozen=True)
class ModelRecord:
    version: str
    kind: str
    path: str
    parent: str | None
    created_ms: int
    network_fingerprint: str
    sha256: str
    code_version: str
    data_range: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    reason: str = ""


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, allow_nan=True))
    os.replace(tmp, path)


class Registry:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.versions = self.root / "versions"

    def _champion_file(self) -> dict[str, Any]:
        path = self.root / "champion.json"
        return json.loads(path.read_text()) if path.exists() else {"version": None, "history": []}

    def register(
        self,
        checkpoint: str | Path,
        *,
        parent: str | None = "champion",
        reason: str = "",
        metrics: dict[str, Any] | None = None,
    ) -> ModelRecord:
        """Copy a verified checkpoint in as the next version; `parent="champion"` records the current one."""
        try:
            ckpt = load_checkpoint(checkpoint)
        except CheckpointError as exc:
            raise RegistryError(f"refusing to register {checkpoint}: {exc}") from exc
        if parent == "champion":
            parent = self._champion_file()["version"]
        if parent is not None and not (self.versions / parent).is_dir():
            raise RegistryError(f"parent version {parent!r} is not in the registry at {self.root}")
        self.versions.mkdir(parents=True, exist_ok=True)
        while True:  # claim the next number; mkdir is atomic, so concurrent registrations cannot collide
            taken = [int(p.name[1:]) for p in self.versions.glob("v[0-9]*") if p.name[1:].isdigit()]
            version = f"v{max(taken, default=0) + 1:04d}"
            try:
                (self.versions / version).mkdir()
                break
            except FileExistsError:
                continue
        ckpt.version = version
        if metrics:
            ckpt.metrics = {**ckpt.metrics, **metrics}
        path = save_checkpoint(ckpt, self.versions / version / "model.pt")
        record = ModelRecord(
            version=version,
            kind=ckpt.kind,
            path=str(path),
            parent=parent,
            created_ms=int(time.time() * 1000),
            network_fingerprint=ckpt.network_fingerprint,
            sha256=ckpt.sha256,
            code_version=ckpt.code_version,
            data_range=ckpt.data_range,
            metrics=ckpt.metrics,
            reason=reason,
        )
        _write_json(self.versions / version / "record.json", asdict(record))
        return record

    def show(self, version: str) -> ModelRecord:
        path = self.versions / version / "record.json"
        if not path.exists():
            known = ", ".join(r.version for r in self.list()) or "none"
            raise RegistryError(f"no version {version!r} in {self.root} (known: {known})")
        return ModelRecord(**json.loads(path.read_text()))

    def list(self) -> list[ModelRecord]:
        """All versions, oldest first."""
        if not self.versions.is_dir():
            return []
        return [self.show(p.parent.name) for p in sorted(self.versions.glob("v*/record.json"))]

    def champion(self) -> ModelRecord | None:
        version = self._champion_file()["version"]
        return self.show(version) if version else None

    def champion_path(self) -> Path:
        record = self.champion()
        if record is None:
            raise RegistryError(f"registry {self.root} has no champion yet: promote a version first")
        return Path(record.path)

    def promote(self, version: str, *, reason: str) -> ModelRecord:
        """Make `version` the champion, recording why (e.g. 'val MAE 3.1 < champion 3.4')."""
        record = self.show(version)
        state = self._champion_file()
        state["version"] = version
        state["history"].append({"version": version, "at_ms": int(time.time() * 1000), "reason": reason})
        _write_json(self.root / "champion.json", state)
        return record

    def rollback(self, *, reason: str) -> ModelRecord:
        """Make the champion before the current one champion again."""
        state = self._champion_file()
        current = state["version"]
        previous = next((h["version"] for h in reversed(state["history"]) if h["version"] != current), None)
        if previous is None:
            raise RegistryError(f"registry {self.root} has no earlier champion to roll back to")
        return self.promote(previous, reason=f"rollback from {current}: {reason}")

    def history(self) -> list[dict[str, Any]]:
        return list(self._champion_file()["history"])
