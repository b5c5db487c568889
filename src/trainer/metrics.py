"""Throughput and model FLOPs utilisation (MFU), in the PaLM convention.

MFU = achieved model FLOP/s / peak FLOP/s, where achieved = flops_per_token * tokens/s and
flops_per_token = 6 * N + 12 * n_layer * n_head * head_dim * T (N: non-embedding parameters plus
the output head). Peaks are dense bf16 tensor-core figures from the vendors' data sheets.
"""

from __future__ import annotations

import time

import torch

PEAK_BF16_FLOPS_PER_SEC = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}


def peak_flops_per_sec(device: torch.device, configured: float | None = None) -> float | None:
    """The configured peak, else the table's entry for this GPU, else None (CPU: MFU is reported as n/a)."""
    if configured:
        return configured
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_FLOPS_PER_SEC.items() if key in name), None)


class ThroughputMeter:
    """Tokens/s and MFU over the steps since the last report."""

    def __init__(self, flops_per_token: int, peak_per_device: float | None, world_size: int) -> None:
        self.flops_per_token = flops_per_token
        self.peak_per_device = peak_per_device
        self.world_size = world_size
        self.reset()

    def reset(self) -> None:
        self._start = time.perf_counter()
        self._tokens = 0
        self._steps = 0

    def update(self, tokens: int) -> None:
        self._tokens += tokens
        self._steps += 1

    def report(self) -> dict[str, float]:
        """Global and per-device tokens/s, step time and MFU since the last report; then resets."""
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        tokens_per_sec = self._tokens / elapsed
        record = {
            "tokens_per_sec": tokens_per_sec,
            "tokens_per_sec_per_device": tokens_per_sec / self.world_size,
            "step_time_s": elapsed / max(self._steps, 1),
        }
        if self.peak_per_device:
            record["mfu"] = self.flops_per_token * tokens_per_sec / (self.peak_per_device * self.world_size)
        self.reset()
        return record
