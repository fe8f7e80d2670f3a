"""A ``TrainerCallback`` that shows a rich progress bar with loss and tokens/s, and keeps the
numbers the model card reports (wall time, tokens seen, loss history)."""

from __future__ import annotations

import time
from typing import Any

from transformers import TrainerCallback


class TrainingProgress(TrainerCallback):
    """Progress bar (steps, loss, tokens/s) plus a record of the run for the model card.

    Tokens are the non-padding input tokens the trainer counted
    (``include_num_input_tokens_seen``; for DPO, prompt + chosen + rejected).
    """

    def __init__(self, stage: str, show: bool = True) -> None:
        self.stage = stage
        self.show = show
        self.losses: list[tuple[int, float]] = []
        self.first_step = 0
        self.last_step = 0
        self.tokens = 0
        self.wall_s = 0.0
        self._tokens0 = 0
        self._t0 = 0.0
        self._bar: Any = None
        self._task: Any = None

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001 - HF signature
        self._t0 = time.perf_counter()
        self.first_step = state.global_step
        self._tokens0 = state.num_input_tokens_seen
        if self.show:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                                 TimeElapsedColumn(), TimeRemainingColumn(), transient=False)
            self._bar.start()
            self._task = self._bar.add_task(self.stage, total=state.max_steps,
                                            completed=state.global_step, info="")

    def _tokens(self, state) -> int:  # noqa: ANN001
        return int(state.num_input_tokens_seen - self._tokens0)

    def tokens_per_s(self, state) -> float:  # noqa: ANN001
        elapsed = time.perf_counter() - self._t0
        return self._tokens(state) / elapsed if elapsed > 0 else 0.0

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
        if logs and "loss" in logs:
            self.losses.append((state.global_step, float(logs["loss"])))
        if self._bar is not None:
            loss = f"loss {self.losses[-1][1]:.3f}  " if self.losses else ""
            self._bar.update(self._task, info=f"{loss}{self.tokens_per_s(state):,.0f} tok/s")

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
        if self._bar is not None:
            self._bar.update(self._task, completed=state.global_step)

    def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001
        self.wall_s = time.perf_counter() - self._t0
        self.last_step = state.global_step
        self.tokens = self._tokens(state)
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
