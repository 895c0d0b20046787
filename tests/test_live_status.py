"""The demo's model line, from lifecycle events as Redis holds them: which model serves since when, what it
replaced, the last gate decision, and a challenger in training — ids of one millisecond kept in order."""

from __future__ import annotations

from typing import Any

from serving.cli.live import ModelStatus


def _event(entry: str, type_: str, version: str, **detail: Any) -> dict[str, Any]:
    return {
        "id": entry,
        "ts": int(entry.split("-")[0]),
        "type": type_,
        "model_version": version,
        "detail": detail,
    }


def test_model_line_follows_the_lifecycle() -> None:
    start = [_event("1000-0", "serving", "v0001", kind="persistence")]
    assert ModelStatus([], 0).line() == "model: starting"
    assert ModelStatus(start, 0).line() == "model v0001 (persistence) serving since +1 s"

    training = [*start, _event("5000-9", "retrain_started", "v0001", reason="schedule")]
    assert ModelStatus(training, 0).line().endswith("· training a challenger since +5 s")

    rejected = [
        *training,
        _event("5000-10", "rejected", "v0002", mae={"challenger": 6.5, "persistence": 4.4}),
    ]
    line = ModelStatus(rejected, 0).line()
    assert "training" not in line  # 5000-10 comes after 5000-9, though "5000-10" < "5000-9" as text
    assert line.endswith("last gate rejected v0002 at +5 s (holdout MAE challenger 6.50, persistence 4.40)")

    promoted = [
        *rejected,
        _event("9000-0", "retrain_started", "v0001"),
        _event("70000-0", "promoted", "v0003", mae={"challenger": 2.1, "persistence": 4.4}),
        _event("70500-0", "serving", "v0003", kind="stformer", previous="v0001"),
    ]
    status = ModelStatus(promoted, 0)
    assert status.line() == (
        "model v0003 (stformer) serving since +70 s, replacing v0001 (persistence) · last gate promoted v0003 "
        "at +70 s (holdout MAE challenger 2.10, persistence 4.40)"
    )
    assert status.kind("v0003") == "stformer" and status.kind("v0002") == "?"
