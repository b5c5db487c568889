"""Throughput, data-wait time, peak memory and model FLOPs utilisation (MFU, PaLM convention).

MFU = achieved model FLOP/s / peak FLOP/s, where achieved = flops_per_token * tokens/s and
flops_per_token = 6 * N + 12 * n_layer * n_head * head_dim * T (N: non-embedding parameters plus
the output head). Peaks are dense bf16 tensor-core figures from the vendors' data sheets.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import torch

PEAK_BF16_FLOPS_PER_SEC = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}
GIB = 2**30


def peak_flops_per_sec(device: torch.device, configured: float | None = None) -> float | None:
    """The configured peak, else the table's entry for this GPU, else None (CPU: MFU is reported as n/a)."""
    if configured:
        return configured
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_FLOPS_PER_SEC.items() if key in name), None)


def peak_memory_bytes(device: torch.device) -> int | None:
    """Peak memory so far: CUDA's max_memory_allocated on a GPU, the process's peak RSS on CPU.

    None where neither can be read (the `resource` module is missing on Windows).
    """
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    # Linux: this process image's high-water mark. Not ru_maxrss, which exec keeps from the process that
    # forked it: a run started by a large parent (a test runner, a notebook) would report its size.
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    try:
        import resource
    except ImportError:
        return None
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return max_rss if sys.platform == "darwin" else max_rss * 1024  # bytes on macOS, KiB on Linux


def current_memory_bytes(device: torch.device) -> int | None:
    """Memory in use now: CUDA's memory_allocated on a GPU, the process's resident set on CPU (Linux).

    None where it cannot be read (no /proc/self/statm: macOS, Windows).
    """
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    try:
        with open("/proc/self/statm") as statm:
            resident_pages = int(statm.read().split()[1])
    except OSError:
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class BuildMemory:
    """One process's memory around its model build (bytes): in use before it (interpreter, torch, data,
    process group: not the model's) and the peak once the model and optimizer are built and filled."""

    before_build: int
    peak_after_build: int

    @classmethod
    def since(cls, before_build: int | None, device: torch.device) -> BuildMemory | None:
        """The figures of a build that started with `before_build` in use; None where memory is unreadable."""
        peak = peak_memory_bytes(device)
        return None if before_build is None or peak is None else cls(before_build, peak)


class Ranks(Protocol):
    """What the meter needs of a Strategy to combine its figures across ranks."""

    rank: int
    world_size: int
    device: torch.device

    def all_reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor: ...


class ThroughputMeter:
    """Tokens/s, step time, data-wait time and MFU over the steps since the last report."""

    def __init__(
        self,
        flops_per_token: int,
        peak_per_device: float | None,
        world_size: int,
        clock: Callable[[], float] = time.perf_counter,
        build_memory: BuildMemory | None = None,
    ) -> None:
        self.flops_per_token = flops_per_token
        self.peak_per_device = peak_per_device
        self.world_size = world_size
        self.clock = clock
        self.build_memory = build_memory  # reported once, with the first record
        self.reset()

    def reset(self) -> None:
        self._start = self.clock()
        self._tokens = 0
        self._steps = 0
        self._data_wait = 0.0
        self._paused = 0.0

    def data_wait(self) -> contextlib.AbstractContextManager[None]:
        """Time the enclosed fetch of a batch as time the step waited for the loader."""
        return self._timing("_data_wait")

    def paused(self) -> contextlib.AbstractContextManager[None]:
        """Leave the enclosed time (evaluation, checkpoints) out of the throughput window."""
        return self._timing("_paused")

    @contextlib.contextmanager
    def _timing(self, total: str) -> Iterator[None]:
        start = self.clock()
        try:
            yield
        finally:
            setattr(self, total, getattr(self, total) + self.clock() - start)

    def update(self, tokens: int) -> None:
        """Count one optimizer step of `tokens` tokens (all ranks together)."""
        self._tokens += tokens
        self._steps += 1

    def report(self, ranks: Ranks | None = None) -> dict[str, float]:
        """Figures since the last report, averaged over `ranks` (memory: their maximum); then resets.

        Costs one small all-reduce, so call it on log steps only. The first report also carries the
        build's memory (`memory_before_build_gib`, `peak_memory_after_build_gib`).
        """
        elapsed, data_wait = self.clock() - self._start - self._paused, self._data_wait
        memory: dict[str, float] = {}
        if ranks is not None and (peak := peak_memory_bytes(ranks.device)) is not None:
            memory["peak_memory_gib"] = peak
            if self.build_memory is not None:
                memory["memory_before_build_gib"] = self.build_memory.before_build
                memory["peak_memory_after_build_gib"] = self.build_memory.peak_after_build
        self.build_memory = None
        if ranks is not None:
            # one collective: times are averaged; each rank's memory figures sit in its own slots, so the
            # mean times world_size gathers them all and the maximum of each can be taken
            slots = torch.zeros(len(memory), ranks.world_size, dtype=torch.float64)
            slots[:, ranks.rank] = torch.tensor(list(memory.values()), dtype=torch.float64)
            local = torch.cat([torch.tensor([elapsed, data_wait], dtype=torch.float64), slots.flatten()])
            combined = ranks.all_reduce_mean(local.to(ranks.device)).cpu()
            elapsed, data_wait = combined[0].item(), combined[1].item()
            largest = (combined[2:].view(len(memory), ranks.world_size) * ranks.world_size).amax(dim=1)
            memory = {key: value.item() / GIB for key, value in zip(memory, largest, strict=True)}
        elapsed = max(elapsed, 1e-9)
        steps = max(self._steps, 1)
        tokens_per_sec = self._tokens / elapsed
        record = {
            "tokens_per_sec": tokens_per_sec,
            "tokens_per_sec_per_device": tokens_per_sec / self.world_size,
            "step_time_s": elapsed / steps,
            "data_wait_s": data_wait / steps,
        }
        record |= memory
        if self.peak_per_device:
            record["mfu"] = self.flops_per_token * tokens_per_sec / (self.peak_per_device * self.world_size)
        self.reset()
        return record
