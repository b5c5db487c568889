"""Trainer: the loop, strategies, optimizer, schedules, checkpoints, metrics and loggers.

`train`, `build_trainer` and `Trainer` are imported on first use, so that light parts (the strategy
registry, devices, the run lock) can be imported without the whole trainer.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gptforge.trainer.build import build_trainer, train
    from gptforge.trainer.loop import Trainer

__all__ = ["Trainer", "build_trainer", "train"]
_WHERE = {
    "Trainer": "gptforge.trainer.loop",
    "build_trainer": "gptforge.trainer.build",
    "train": "gptforge.trainer.build",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'gptforge.trainer' has no attribute {name!r}")
