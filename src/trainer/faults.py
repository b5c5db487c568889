"""What the loop does when a step goes wrong or the scheduler wants the machine back.

- Non-finite gradient norm (any rank: gradients are reduced, so the norm is global): the strategy
  skips the optimizer step; after `max_consecutive_skips` in a row, or at once with
  `nonfinite_policy=stop`, the run stops with a checkpoint of the last good state.
- Loss spike (loss above mean + k * std of the recent window): logged, and skipped if asked.
- SIGTERM / SIGUSR1 (what SLURM and cloud schedulers send before a kill), even on one rank: all
  ranks agree at the next step boundary, save a checkpoint and exit with PREEMPTED_EXIT_CODE.
- A collective that a stuck or dead rank never joins: after `strategy.timeout_s` the waiting ranks
  exit with CollectiveFailed (one line naming the rank and the operation); torchrun --max-restarts
  restarts the job, which resumes from the last checkpoint.
"""

from __future__ import annotations

import math
from collections import deque

from gptforge.config import TrainerConfig
from gptforge.errors import GptforgeError
from gptforge.preemption import PREEMPTED_EXIT_CODE


class TrainingStopped(GptforgeError):
    """Training stopped on purpose (numerical fault or preemption) after saving a checkpoint."""

    exit_code = 3


class Preempted(TrainingStopped):
    """A scheduler asked for the machine; the checkpoint of this step is saved."""

    exit_code = PREEMPTED_EXIT_CODE

    @classmethod
    def at(cls, step: int, signal_name: str | None) -> Preempted:
        received = signal_name or "a signal on another rank"
        return cls(
            f"preempted by {received} at step {step}; checkpoint step_{step} saved: "
            "run the same command to resume"
        )

    @classmethod
    def before_training(cls, step: int, signal_name: str | None) -> Preempted:
        received = signal_name or "a signal on another rank"
        resume = f"resume from step {step}" if step else "start"
        return cls(
            f"preempted by {received} during start-up, before any step ran: run the same command to {resume}"
        )


class CollectiveFailed(GptforgeError):
    """A collective did not finish on this rank: another rank is stuck past strategy.timeout_s, or died."""

    exit_code = 4


class StepGuard:
    """Decides whether a step may update the weights, and when skipped steps must stop the run."""

    def __init__(self, cfg: TrainerConfig) -> None:
        self.cfg = cfg
        self.consecutive_skips = 0
        self.recent_losses: deque[float] = deque(maxlen=cfg.spike_window)

    def is_spike(self, loss: float) -> bool:
        """True if `loss` is a spike against the recent window (needs half a window of history)."""
        if not self.cfg.spike_threshold or len(self.recent_losses) < self.recent_losses.maxlen // 2:
            return False
        mean = sum(self.recent_losses) / len(self.recent_losses)
        std = math.sqrt(sum((x - mean) ** 2 for x in self.recent_losses) / len(self.recent_losses))
        return loss > mean + self.cfg.spike_threshold * std

    def state_dict(self) -> dict:
        """The window and counter, kept in the checkpoint: a resumed run judges spikes as the straight one."""
        return {"consecutive_skips": self.consecutive_skips, "recent_losses": list(self.recent_losses)}

    def load_state_dict(self, state: dict) -> None:
        self.consecutive_skips = state["consecutive_skips"]
        self.recent_losses.clear()
        self.recent_losses.extend(state["recent_losses"][-self.recent_losses.maxlen :])

    def after_step(self, step: int, loss: float | None, stepped: bool, spike: bool) -> None:
        """Record the outcome of `step`; raises TrainingStopped when the policy says stop."""
        if stepped:
            self.consecutive_skips = 0
            if loss is not None and math.isfinite(loss) and not spike:
                self.recent_losses.append(loss)
            return
        if spike:
            return  # skipped on purpose: the weights are fine
        self.consecutive_skips += 1
        if self.cfg.nonfinite_policy == "stop" or self.consecutive_skips > self.cfg.max_consecutive_skips:
            raise TrainingStopped(
                f"non-finite gradient norm at step {step + 1} ({self.consecutive_skips} step(s) in a row); "
                "stopped with a checkpoint of the last good state — lower optim.lr or raise "
                "trainer.max_consecutive_skips, then run the same command to resume"
            )
