"""Metric sinks: console (progress bar or plain lines) and JSON Lines; rank 0 only."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Protocol

from tqdm import tqdm

from gptforge.config import LoggerConfig


class MetricLogger(Protocol):
    def log(self, record: dict) -> None: ...

    def close(self) -> None: ...


def _format_eta(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


def format_record(record: dict) -> str:
    """One human line for a metric record."""
    if "val_loss" in record:
        return f"step {record['step']} | val_loss {record['val_loss']:.4f} | val_ppl {record['val_ppl']:.2f}"
    parts = [
        f"step {record['step']}/{record['max_steps']}",
        f"loss {record['loss']:.4f}",
        f"lr {record['lr']:.2e}",
        f"grad_norm {record['grad_norm']:.3f}",
        f"{record['tokens_per_sec'] / 1e3:.1f}K tok/s",
        f"mfu {record['mfu']:.1%}" if "mfu" in record else "mfu n/a",
        f"eta {_format_eta(record['eta_s'])}",
    ]
    return " | ".join(parts)


class ConsoleLogger:
    """A live progress bar on a terminal; one line per record when output is a file or a pipe."""

    def __init__(self, max_steps: int, start_step: int, progress_bar: bool | None = None) -> None:
        use_bar = sys.stderr.isatty() if progress_bar is None else progress_bar
        self.bar = tqdm(total=max_steps, initial=start_step, dynamic_ncols=True) if use_bar else None

    def log(self, record: dict) -> None:
        if self.bar is None:
            print(format_record(record), flush=True)
        elif "val_loss" in record:
            self.bar.write(format_record(record))
        else:
            self.bar.update(record["step"] - self.bar.n)
            postfix = (
                f"loss {record['loss']:.4f} lr {record['lr']:.1e} {record['tokens_per_sec'] / 1e3:.1f}K tok/s"
            )
            if "mfu" in record:
                postfix += f" mfu {record['mfu']:.1%}"
            self.bar.set_postfix_str(postfix)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class JsonlLogger:
    """Appends one JSON object per record; on resume, drops records of steps after the checkpoint."""

    def __init__(self, path: Path, resume_step: int | None = None) -> None:
        self.path = Path(path)
        if resume_step is not None and self.path.exists():
            kept = [
                line
                for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= resume_step
            ]
            self.path.write_text("".join(line + "\n" for line in kept))
        self.file = open(self.path, "a")  # noqa: SIM115 - held open for the run, closed by close()

    def log(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class Loggers:
    """Fans every record out to the configured loggers."""

    def __init__(self, loggers: list[MetricLogger]) -> None:
        self.loggers = loggers

    def log(self, record: dict) -> None:
        for logger in self.loggers:
            logger.log(record)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()


def build_loggers(cfg: LoggerConfig, run_dir: Path, max_steps: int, start_step: int) -> Loggers:
    """The loggers set in `cfg`, writing into `run_dir`."""
    loggers: list[MetricLogger] = []
    if cfg.console is not None:
        loggers.append(ConsoleLogger(max_steps, start_step, cfg.console.progress_bar))
    if cfg.jsonl is not None:
        loggers.append(JsonlLogger(run_dir / cfg.jsonl.filename, resume_step=start_step))
    return Loggers(loggers)
