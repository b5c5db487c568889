"""One run per run directory: an exclusive lock on `<out_dir>/.gptforge.lock`, held for the run's life.

The lock is an `flock`, which the kernel drops when its process exits however it exits (SIGKILL included),
so a lock left by a dead run is free again at once; the file keeps the holder's pid, host and start time
for the message a second start prints. A forked child (a data-loader worker) would inherit the descriptor and
keep the lock alive after its parent was killed, until it noticed; so every fork closes the child's copy
(which leaves the parent's lock in place: an flock lives until all descriptors of the open file are closed).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from pathlib import Path

from gptforge.errors import ConfigError

LOCK_FILE = ".gptforge.lock"

_held: set[int] = set()  # descriptors of locks this process holds


def _close_in_child() -> None:
    for fd in _held:
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()


os.register_at_fork(after_in_child=_close_in_child)


class RunDirectoryLock:
    """Held by the main rank from before anything in the run directory changes until the run ends."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise ConfigError naming the run that holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise ConfigError(
                f"out_dir {self.path.parent} is in use by another run ({holder}): wait for it to end, stop "
                "it, or give this run another out_dir"
            ) from None
        os.ftruncate(fd, 0)
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {started}\n".encode(), 0)
        self._fd = fd
        _held.add(fd)

    def release(self) -> None:
        if self._fd is not None:
            _held.discard(self._fd)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
