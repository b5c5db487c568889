"""SIGTERM / SIGUSR1, what SLURM and cloud schedulers send before they take the machine back.

Imports nothing heavy, so that `scripts/train.py` watches for the signals from its first line: a job
preempted while it is still starting up (imports, tokenizer training, data opening) exits with
PREEMPTED_EXIT_CODE like one preempted mid-run, instead of dying of the signal.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: try again later; a requeued job resumes from the checkpoint
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class PreemptionWatcher:
    """Notes SIGTERM / SIGUSR1; `requested(any_rank)` tells every rank if any rank got one."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._note)

    def _note(self, signum: int, frame: object) -> None:
        self.signal_name = signal.Signals(signum).name

    def requested(self, any_rank: Callable[[bool], bool]) -> bool:
        return any_rank(self.signal_name is not None)

    def close(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


_process_watcher: PreemptionWatcher | None = None


def watch_for_preemption() -> PreemptionWatcher:
    """The process's watcher, installed on first use: the main process notes the signals from then on."""
    global _process_watcher
    if _process_watcher is None:
        _process_watcher = PreemptionWatcher()
    return _process_watcher


def ignore_preemption_signals(worker_id: int = 0) -> None:
    """For data-loader workers: a scheduler signals every process of the job, but the workers must keep
    serving batches while the main process saves its checkpoint; it shuts them down afterwards."""
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
