"""The fault suite's record: what each scenario observed, and the tables `docs/RELIABILITY.md` shows.

A scenario records the counts it measured — readings lost, forecast steps missing or doubled, anomalies
such as a loop that stopped cycling — and the outcome column is derived from them: a row reads "survived"
only when every count is zero and no anomaly was seen. Tests record *before* they assert, so a failing
scenario still shows its figures; a scenario that never got as far as recording is listed as such.

Plain data, no servers and no files of its own: `tests/faults/conftest.py` saves the session's record as
JSON where `SENSORCAST_RELIABILITY_OUT` says (a temporary folder otherwise), and `benchmarks/reliability.py`
runs the suite and turns that JSON into the document.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

OUT_ENV = "SENSORCAST_RELIABILITY_OUT"

# every scenario a full run records, in table order; one that is absent shows as "not recorded"
SCENARIOS = (
    "ingest SIGKILL mid-stream + restart",
    "serve SIGKILL mid-stream + restart",
    "forecaster actor killed",
    "broker paused 5 s",
    "broker paused 30 s",
    "redis paused 5 s",
    "redis paused 30 s",
    "object store paused 8 s",
    "training job crash",
    "training NaN loss",
    "tampered checkpoint",
    "truncated checkpoint",
    "foreign checkpoint",
    "spoiled registry champion",
    "bad-input corpus through the consumer",
    "decoder/ingestor fuzz",
)


@dataclass(frozen=True)
class Scenario:
    """One scenario's measured outcome."""

    lost: int | None  # None: no readings were at stake in the scenario
    missing: int | None
    doubled: int | None
    recovery_s: float | None
    detail: str
    anomalies: tuple[str, ...] = ()

    @property
    def outcome(self) -> str:
        counts = (("lost", self.lost), ("missing", self.missing), ("doubled", self.doubled))
        bad = [f"{label} {n}" for label, n in counts if n] + list(self.anomalies)  # None and 0 are no loss
        return "; ".join(bad) if bad else "survived"


@dataclass(frozen=True)
class InputClass:
    """One bad-input class: the reason it was expected to get and what the consumer did with it."""

    expected: str
    reason: str  # observed; "" when no dead letter came back for it
    readings: int
    dead_lettered: bool
    detail: str

    @property
    def outcome(self) -> str:
        if self.reason != self.expected:
            return f"got `{self.reason or 'nothing'}`, expected `{self.expected}`"
        return "dead-lettered" if self.dead_lettered else self.reason


@dataclass
class Reliability:
    """Measured outcomes, in the order recorded."""

    scenarios: dict[str, Scenario] = field(default_factory=dict)
    inputs: dict[str, InputClass] = field(default_factory=dict)

    def record(
        self,
        name: str,
        *,
        lost: int | None,
        missing: int | None = None,
        doubled: int | None = None,
        recovery_s: float | None = None,
        detail: str = "",
        anomalies: Sequence[str] = (),
    ) -> Scenario:
        """Record what a scenario observed; call it before the test's assertions. A count is None where
        the scenario puts nothing of that kind at stake (a refused checkpoint loses no readings)."""
        scenario = Scenario(lost, missing, doubled, recovery_s, detail, tuple(anomalies))
        self.scenarios[name] = scenario
        return scenario

    def record_input(
        self, name: str, *, expected: str, reason: str, readings: int, dead_lettered: bool, detail: str
    ) -> None:
        self.inputs[name] = InputClass(expected, reason, readings, dead_lettered, detail)

    def save(self, path: Path) -> None:
        doc = {
            "scenarios": {k: asdict(v) for k, v in self.scenarios.items()},
            "inputs": {k: asdict(v) for k, v in self.inputs.items()},
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=1))

    @classmethod
    def load(cls, path: Path) -> Reliability:
        doc: dict[str, Any] = json.loads(path.read_text())
        scenarios = {
            k: Scenario(**{**v, "anomalies": tuple(v["anomalies"])}) for k, v in doc["scenarios"].items()
        }
        inputs = {k: InputClass(**v) for k, v in doc["inputs"].items()}
        return cls(scenarios, inputs)

    def failures(self) -> list[str]:
        """Scenarios and input classes whose outcome is not a success, and expected scenarios never recorded."""
        bad = [f"{name}: {s.outcome}" for name, s in self.scenarios.items() if s.outcome != "survived"]
        bad += [f"{name}: not recorded" for name in SCENARIOS if name not in self.scenarios]
        bad += [f"{name}: {i.outcome}" for name, i in self.inputs.items() if i.reason != i.expected]
        return bad

    def markdown(self) -> str:
        """The scenario table (expected scenarios first, in `SCENARIOS` order) and the bad-input table."""
        lines = [
            "| scenario | outcome | lost | missing | doubled | recovery (s) | measured |",
            "|---|---|---|---|---|---|---|",
        ]
        names = [n for n in SCENARIOS if n in self.scenarios] + [
            n for n in self.scenarios if n not in SCENARIOS
        ]
        for name in names:
            s = self.scenarios[name]
            rec = "—" if s.recovery_s is None else f"{s.recovery_s:.2f}"
            counts = " | ".join("—" if n is None else str(n) for n in (s.lost, s.missing, s.doubled))
            lines.append(f"| {name} | {s.outcome} | {counts} | {rec} | {_cell(s.detail)} |")
        for name in SCENARIOS:
            if name not in self.scenarios:
                lines.append(
                    f"| {name} | not recorded: the test failed before measuring, or did not run | | | | | |"
                )
        if self.inputs:
            n_dead = sum(1 for i in self.inputs.values() if i.dead_lettered)
            lines += [
                "",
                f"## Bad-input classes ({len(self.inputs)} classes, {n_dead} dead-lettered)",
                "",
                "Each produced to Kafka and read by the real consumer; reasons and details read back from the",
                "dead-letter topic.",
                "",
                "| input class | outcome | reason | readings | detail (from the dead letter) |",
                "|---|---|---|---|---|",
            ]
            for name, i in self.inputs.items():
                reason = f"`{i.reason}`" if i.reason else "—"
                lines.append(f"| {name} | {i.outcome} | {reason} | {i.readings} | {_cell(i.detail)[:90]} |")
        return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
