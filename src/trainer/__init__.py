"""Trainer: the loop, strategies, optimizer, schedules, checkpoints, metrics and loggers."""

from gptforge.trainer.build import build_trainer, train
from gptforge.trainer.loop import Trainer

__all__ = ["Trainer", "build_trainer", "train"]
