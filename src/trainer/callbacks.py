"""Side concerns of a run as callbacks: what the loop calls at its boundaries, kept out of the loop itself.

A callback overrides the hooks it needs; the loop calls them in list order on every rank:

    on_fit_start(trainer)            training is about to start (after a resume)
    on_step_start(trainer)           before step `trainer.step + 1`; may set `trainer.step_loss_scale`
    on_record(trainer, record)       a metrics record (train, eval, event) is complete
    on_save(trainer, directory)      a checkpoint is being written into `directory` (every rank)
    on_fit_end(trainer)              the run ends, however it ends

A stateful callback has a `name` and returns its state from `state_dict()` (JSON: the main rank's copy is
kept); the trainer keeps it in the checkpoint under that name and hands it back through `load_state_dict`
on resume. `default_callbacks(cfg)`
is what a run gets: its loggers, its LoRA adapter export, and the fault injector when a test asks for one.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from gptforge.config import Config
from gptforge.trainer.checkpoint import save_lora_adapters
from gptforge.trainer.loggers import Loggers, build_loggers

if TYPE_CHECKING:
    from gptforge.trainer.loop import Trainer

INJECT_ENV = "GPTFORGE_INJECT_NONFINITE"  # "<step>:<rank>" makes that rank's gradients inf (tests)
# "<step>:<rank>:<seconds>" makes that rank sleep inside that step, on torchrun's first attempt only (tests)
INJECT_HANG_ENV = "GPTFORGE_INJECT_HANG"


class Callback:
    """No-op hooks; subclasses override what they need (the module docstring lists them)."""

    name = ""  # stateful callbacks only: the key of their state in the checkpoint

    def on_fit_start(self, trainer: Trainer) -> None:
        pass

    def on_step_start(self, trainer: Trainer) -> None:
        pass

    def on_record(self, trainer: Trainer, record: dict) -> None:
        pass

    def on_save(self, trainer: Trainer, directory: Path) -> None:
        pass

    def on_fit_end(self, trainer: Trainer) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class LoggerCallback(Callback):
    """The configured metric loggers (console, JSONL, wandb, TensorBoard), on the main rank."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.loggers: Loggers | None = None

    def on_fit_start(self, trainer: Trainer) -> None:
        if trainer.strategy.is_main:
            self.loggers = build_loggers(self.cfg, trainer.summary())

    def on_record(self, trainer: Trainer, record: dict) -> None:
        if self.loggers is not None:
            self.loggers.log(record)

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.loggers is not None:
            self.loggers.close()
            self.loggers = None


class LoraAdapterExport(Callback):
    """Each checkpoint of a LoRA run also holds the adapters alone, for sharing and for export."""

    def on_save(self, trainer: Trainer, directory: Path) -> None:
        state = trainer.strategy.full_model_state_dict()  # a collective on sharded strategies
        if trainer.strategy.is_main:
            save_lora_adapters(state, directory, trainer.cfg.model.lora)


class FaultInjector(Callback):
    """Faults for the reliability tests, named by environment variables that the tests set:
    GPTFORGE_INJECT_NONFINITE=<step>:<rank> makes that rank's gradients inf at that step, and
    GPTFORGE_INJECT_HANG=<step>:<rank>:<seconds> makes that rank sleep inside it (first torchrun attempt
    only: a restart redoes the steps after the last checkpoint, and the fault must not follow it there).
    Steps count from 0, as `trainer.step` before the step runs."""

    def __init__(self, nonfinite: tuple[int, int] | None, hang: tuple[int, int, float] | None) -> None:
        self.nonfinite = nonfinite
        self.hang = hang

    @classmethod
    def from_env(cls) -> FaultInjector | None:
        nonfinite, hang = os.environ.get(INJECT_ENV), os.environ.get(INJECT_HANG_ENV)
        if not nonfinite and not hang:
            return None
        step_rank = tuple(int(part) for part in nonfinite.split(":")) if nonfinite else None
        hang_target = None
        if hang:
            step, rank, seconds = hang.split(":")
            hang_target = (int(step), int(rank), float(seconds))
        return cls(step_rank, hang_target)  # type: ignore[arg-type]

    def on_step_start(self, trainer: Trainer) -> None:
        here = (trainer.step, trainer.strategy.rank)
        first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
        if self.hang and first_attempt and here == self.hang[:2]:
            time.sleep(self.hang[2])
        if self.nonfinite and here == self.nonfinite:
            trainer.step_loss_scale = math.inf  # reduced with the gradients: every rank sees inf


def default_callbacks(cfg: Config) -> list[Callback]:
    """What every run gets: its loggers, LoRA adapter export when training adapters, injected faults."""
    callbacks: list[Callback] = [LoggerCallback(cfg)]
    if cfg.model.lora.rank:
        callbacks.append(LoraAdapterExport())
    injector = FaultInjector.from_env()
    if injector is not None:
        callbacks.append(injector)
    return callbacks
