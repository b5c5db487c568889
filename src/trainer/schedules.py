"""Learning rate against optimizer step: linear warm-up, then cosine, linear, warmup-stable-decay or flat."""

from __future__ import annotations

import math

from gptforge.config import SchedulerConfig


class LRSchedule:
    """Maps a step to a learning rate; stateless, so a resumed run only needs the step."""

    def __init__(self, cfg: SchedulerConfig, peak_lr: float, max_steps: int) -> None:
        self.cfg = cfg
        self.peak_lr = peak_lr
        self.min_lr = cfg.min_lr_ratio * peak_lr
        self.decay_steps = cfg.decay_steps or max_steps

    def __call__(self, step: int) -> float:
        cfg, peak, end = self.cfg, self.peak_lr, self.decay_steps
        if step < cfg.warmup_steps:
            return peak * (step + 1) / cfg.warmup_steps
        if cfg.name == "constant":
            return peak
        if step >= end:
            return self.min_lr
        if cfg.name == "wsd":
            decay_start = self.wsd_decay_start
            if step < decay_start:
                return peak
            progress = (step - decay_start) / max(1, end - decay_start)
            return peak + progress * (self.min_lr - peak)
        progress = (step - cfg.warmup_steps) / max(1, end - cfg.warmup_steps)
        if cfg.name == "linear":
            return peak + progress * (self.min_lr - peak)
        return self.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (peak - self.min_lr)

    @property
    def wsd_decay_start(self) -> int:
        """wsd: the step where the flat part ends and the decay begins."""
        return self.decay_steps - int(self.cfg.wsd_decay_fraction * self.decay_steps)
