"""Callbacks: a run calls its hooks in order on every boundary, and a stateful callback resumes its state."""

from __future__ import annotations

from pathlib import Path

from gptforge.trainer import train
from gptforge.trainer.callbacks import Callback

RUN = [
    "trainer.log_every=1",
    "trainer.eval_every=2",
    "trainer.checkpoint_every=2",
    "scheduler=constant",
    "scheduler.warmup_steps=1",
]


class Recorder(Callback):
    """Every hook it sees, in order; and a count of steps that is checkpointed."""

    name = "recorder"

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.steps_seen = 0

    def on_fit_start(self, trainer) -> None:
        self.calls.append("fit_start")

    def on_step_start(self, trainer) -> None:
        self.calls.append(f"step_start {trainer.step + 1}")
        self.steps_seen += 1

    def on_record(self, trainer, record: dict) -> None:
        kind = "val" if "val_loss" in record else "train" if "loss" in record else "other"
        self.calls.append(f"record {kind} {record['step']}")

    def on_save(self, trainer, directory: Path) -> None:
        assert directory.name.startswith(".tmp-step_")  # written into the staging dir, before the rename
        self.calls.append(f"save {trainer.step}")

    def on_fit_end(self, trainer) -> None:
        self.calls.append("fit_end")

    def state_dict(self) -> dict:
        return {"steps_seen": self.steps_seen}

    def load_state_dict(self, state: dict) -> None:
        self.steps_seen = state["steps_seen"]


def test_hooks_run_in_order_and_a_stateful_callback_resumes(tiny_config) -> None:
    first = Recorder()
    train(tiny_config(*RUN, "trainer.max_steps=2"), callbacks=[first])
    assert first.calls == [
        "fit_start",
        "step_start 1",
        "record train 1",
        "step_start 2",
        "record train 2",
        "record val 2",
        "save 2",
        "fit_end",
    ]
    second = Recorder()
    train(tiny_config(*RUN, "trainer.max_steps=4"), callbacks=[second])
    assert second.calls[:2] == ["fit_start", "step_start 3"]
    assert second.steps_seen == 4  # 2 restored from the checkpoint, 2 counted here
