"""`trainer.profile=true`: a torch.profiler trace of a few training steps, one file per rank."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, schedule

from gptforge.config import TrainerConfig


class StepProfiler:
    """Profiles steps wait+1 .. wait+warmup+active after `start()`; a no-op unless `trainer.profile`.

    Writes `<out_dir>/trace_rank<R>_step<N>.json` (open it in https://ui.perfetto.dev or chrome://tracing)
    and, on rank 0, `ops_rank0.txt`: the operators that took the most time.
    """

    def __init__(self, cfg: TrainerConfig, out_dir: Path, rank: int, device: torch.device) -> None:
        self.enabled = cfg.profile
        self.out_dir = out_dir
        self.rank = rank
        self.device = device
        self.wait, self.warmup, self.active = (
            cfg.profile_wait_steps,
            cfg.profile_warmup_steps,
            cfg.profile_active_steps,
        )
        self.trace_path: Path | None = None
        self._profiler: profile | None = None
        self._step = 0

    def start(self) -> None:
        if not self.enabled:
            return
        activities = [ProfilerActivity.CPU]
        if self.device.type == "cuda":
            activities.append(ProfilerActivity.CUDA)
        self._profiler = profile(
            activities=activities,
            schedule=schedule(wait=self.wait, warmup=self.warmup, active=self.active, repeat=1),
            on_trace_ready=self._write,
        )
        self._profiler.start()

    def step(self, step: int) -> bool:
        """Call after each optimizer step (`step` names the trace); True once, when the trace is written."""
        if self._profiler is None:
            return False
        self._step = step
        self._profiler.step()
        if self.trace_path is None:
            return False
        self.close()  # the one window is recorded: stop paying for the profiler
        return True

    def close(self) -> None:
        if self._profiler is None:
            return
        profiler, self._profiler = self._profiler, None
        profiler.stop()
        if self.trace_path is None and self.rank == 0:
            needed = self.wait + self.warmup + self.active
            print(
                f"gptforge: no profiler trace: the run took fewer than the {needed} steps it needs",
                flush=True,
            )

    def _write(self, profiler: profile) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.trace_path = self.out_dir / f"trace_rank{self.rank}_step{self._step}.json"
        profiler.export_chrome_trace(str(self.trace_path))
        if self.rank == 0:
            sort_by = "self_cuda_time_total" if self.device.type == "cuda" else "self_cpu_time_total"
            table = profiler.key_averages().table(sort_by=sort_by, row_limit=25)
            (self.out_dir / "ops_rank0.txt").write_text(table + "\n")
            print(f"gptforge: profiler trace of {self.active} steps written to {self.trace_path}", flush=True)
