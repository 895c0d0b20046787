"""What `sensorcast train` shows while it trains: one display of the epochs (loss, validation MAE,
samples/s, and the time left within the epoch limit and the time budget) — a rich progress bar when the
console is a terminal, one plain line per epoch when it is not (a log file, a CI job, a pipe).

It only shows the rows `train_func` produces (on rank 0, or relayed from a Ray Train worker); it computes
no metrics and writes nothing else.
"""

from __future__ import annotations

import math
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn


class EpochProgress:
    """A context manager; call it with each epoch's row."""

    def __init__(self, console: Console, *, epochs: int, time_budget_s: float | None = None) -> None:
        self.console = console
        self.epochs = epochs
        self.time_budget_s = time_budget_s
        self._bar: Progress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> EpochProgress:
        if self.console.is_terminal:
            self._bar = Progress(
                TextColumn("epoch {task.completed:.0f}/{task.total:.0f}"),
                BarColumn(bar_width=24),
                TextColumn("{task.fields[metrics]}"),
                console=self.console,
            )
            self._task = self._bar.add_task("train", total=self.epochs, metrics="starting…")
            self._bar.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.stop()

    def __call__(self, row: dict[str, Any]) -> None:
        if self._bar is None or self._task is None:
            self.console.print(
                epoch_line(row, self.epochs, self.time_budget_s), highlight=False, soft_wrap=True
            )
            return
        self._bar.update(
            self._task, completed=row["epoch"], metrics=_metrics(row, self.epochs, self.time_budget_s)
        )


def epoch_line(row: dict[str, Any], epochs: int, time_budget_s: float | None = None) -> str:
    """One epoch as one line of plain text."""
    return f"epoch {row['epoch']:>3}/{epochs}  {_metrics(row, epochs, time_budget_s)}"


def _metrics(row: dict[str, Any], epochs: int, time_budget_s: float | None) -> str:
    val = (
        f"val MAE {row['val_mae']:.4f} (best {row['best_val_mae']:.4f})"
        if math.isfinite(row["val_mae"])
        else "no validation (refit on train+val)"
    )
    return (
        f"loss {row['train_loss']:.4f}  {val}  {row['samples_per_s']:.0f} samples/s  "
        f"{_clock(row['elapsed_s'])} elapsed  {_eta(row, epochs, time_budget_s)}"
    )


def _eta(row: dict[str, Any], epochs: int, time_budget_s: float | None) -> str:
    """Time left at the pace so far, within the time budget; early stopping may end the run sooner."""
    elapsed = row["elapsed_s"]
    left = (epochs - row["epoch"]) * elapsed / max(row["epoch"], 1)
    if time_budget_s is None:
        return f"ETA ≤ {_clock(left)}"
    return f"ETA ≤ {_clock(min(left, max(time_budget_s - elapsed, 0.0)))} (budget {_clock(time_budget_s)})"


def _clock(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
