"""Learning rate against optimizer step: linear warm-up, then cosine, linear, warmup-stable-decay or flat."""

from __future__ import annotations

import math

from gptforge.config import SchedulerConfig


class LRSchedule:
    """Maps a step to a learning rate; stateless, so a resumed run only needs the step."""

    def __init__(self, cfg: SchedulerConfig, peak_lr: float, max_steps: int) -> None:
        self.cfg = cfg
        self.peak_lr = peak_lr
        self.decay_steps = cfg.decay_steps or max_steps

    def __call__(self, step: int) -> float:
        cfg, peak, end = self.cfg, self.peak_lr, self.decay_steps
        if step < cfg.warmup_steps:
            return peak * (step + 1) / cfg.warmup_steps
        if cfg.name == "constant":
            return peak
        if step >= end:
            return cfg.min_lr
        if cfg.name == "wsd":
            decay_start = end - int(cfg.wsd_decay_fraction * end)
            if step < decay_start:
                return peak
            progress = (step - decay_start) / max(1, end - decay_start)
            return peak + progress * (cfg.min_lr - peak)
        progress = (step - cfg.warmup_steps) / max(1, end - cfg.warmup_steps)
        if cfg.name == "linear":
            return peak + progress * (cfg.min_lr - peak)
        return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (peak - cfg.min_lr)
