"""Metric sinks: console, JSON Lines, Weights & Biases, TensorBoard; several at once, rank 0 only.

A record is a flat dict: a train record (`loss`, `lr`, throughput, ...), an eval record (`val_loss`,
`val_ppl`), a task record (downstream scores `eval/<task>/<metric>`, gptforge.eval) or an event
(`event`: loss spike, skipped step). Every record has a `step`.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Protocol

from omegaconf import OmegaConf
from tqdm import tqdm

from gptforge.cli import log_only
from gptforge.config import Config, LoggerConfig, WandbLoggerConfig
from gptforge.errors import ConfigError
from gptforge.eval.evaluator import TASK_PREFIX
from gptforge.records import read_metrics
from gptforge.trainer.checkpoint import write_atomic
from gptforge.trainer.checkpoint.layout import WANDB_ID_FILE
from gptforge.trainer.summary import RunSummary


class MetricLogger(Protocol):
    def log(self, record: dict) -> None: ...

    def close(self) -> None: ...


def _format_eta(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


def is_task_record(record: dict) -> bool:
    """Whether a record holds downstream task scores (keys `eval/<task>/<metric>`)."""
    return any(key.startswith(TASK_PREFIX) for key in record)


def _format_tasks(record: dict) -> str:
    tasks: dict[str, list[str]] = {}
    for key, value in record.items():
        if key.startswith(TASK_PREFIX):
            task, metric = key.removeprefix(TASK_PREFIX).rsplit("/", 1)
            shown = f"{int(value)} examples" if metric == "examples" else f"{metric} {value:.4f}"
            tasks.setdefault(task, []).append(shown)
    return " | ".join([f"step {record['step']}", *(f"{task}: {', '.join(v)}" for task, v in tasks.items())])


def format_record(record: dict) -> str:
    """One human line for a metric record."""
    if is_task_record(record):
        return _format_tasks(record)
    if "event" in record:
        outcome = "step skipped" if record["skipped"] else "step taken"
        return f"step {record['step']} | {record['event']} | {outcome}"
    if "val_loss" in record:
        return f"step {record['step']} | val_loss {record['val_loss']:.4f} | val_ppl {record['val_ppl']:.2f}"
    parts = [
        f"step {record['step']}/{record['max_steps']}",
        f"loss {record['loss']:.4f}",
        f"lr {record['lr']:.2e}",
        f"grad_norm {record['grad_norm']:.3f}",
        f"{record['tokens_per_sec'] / 1e3:.1f}K tok/s",
        f"mfu {record['mfu']:.1%}" if "mfu" in record else "mfu n/a",
        f"data_wait {record['data_wait_s'] * 1e3:.1f}ms",
    ]
    if "peak_memory_gib" in record:
        parts.append(f"mem {record['peak_memory_gib']:.2f}GiB")
    parts.append(f"eta {_format_eta(record['eta_s'])}")
    return " | ".join(parts)


def scalars(record: dict) -> dict[str, float]:
    """The numbers of a record under dashboard names: train/loss, val/loss, events/loss_spike, ..."""
    if "event" in record:
        return {f"events/{record['event']}": 1.0}
    if is_task_record(record):
        return {key: float(value) for key, value in record.items() if key.startswith(TASK_PREFIX)}
    prefix = "val/" if "val_loss" in record else "train/"
    return {
        prefix + key.removeprefix("val_"): float(value)
        for key, value in record.items()
        if key not in ("step", "max_steps") and isinstance(value, int | float) and not isinstance(value, bool)
    }


class ConsoleLogger:
    """The run summary, then a live progress bar on a terminal, or one line per record in a file or pipe."""

    def __init__(self, summary: RunSummary, progress_bar: bool | None = None) -> None:
        print("\n".join(summary.lines()), flush=True)
        use_bar = sys.stderr.isatty() if progress_bar is None else progress_bar
        self.bar = None
        if use_bar:
            self.bar = tqdm(
                total=summary.max_steps, initial=summary.start_step, dynamic_ncols=True, unit="step"
            )

    def log(self, record: dict) -> None:
        if self.bar is None:
            print(format_record(record), flush=True)
        elif "val_loss" in record or "event" in record or is_task_record(record):
            self.bar.write(format_record(record))
        else:
            log_only(format_record(record))  # train.log gets the line the bar stands for
            self.bar.update(record["step"] - self.bar.n)  # tqdm's own remaining time is the ETA
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
            kept = [json.dumps(r) for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
            write_atomic(self.path, "".join(line + "\n" for line in kept))
        self.file = open(self.path, "a")  # noqa: SIM115 - held open for the run, closed by close()

    def log(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class TensorboardLogger:
    """Event files under `log_dir`; on resume, TensorBoard hides what was logged after the checkpoint."""

    def __init__(self, log_dir: Path, summary: RunSummary) -> None:
        from torch.utils.tensorboard import SummaryWriter

        purge_step = summary.start_step + 1 if summary.start_step else None
        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)
        table = "\n".join(f"| {label} | {value} |" for label, value in summary.rows())
        self.writer.add_text("run_summary", "| | |\n|---|---|\n" + table, summary.start_step)

    def log(self, record: dict) -> None:
        for name, value in scalars(record).items():
            self.writer.add_scalar(name, value, record["step"])

    def close(self) -> None:
        self.writer.close()


class WandbLogger:
    """A Weights & Biases run; its id is kept in the run directory so that a resume continues it."""

    def __init__(self, cfg: WandbLoggerConfig, run_config: dict, summary: RunSummary) -> None:
        import wandb

        run_dir = Path(summary.run_dir)
        id_file = run_dir / WANDB_ID_FILE
        resuming = summary.start_step > 0 and id_file.exists()
        run_id = id_file.read_text().strip() if resuming else None  # None: wandb makes a new one
        wandb_dir = Path(cfg.dir) if cfg.dir else run_dir
        wandb_dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=cfg.project,
            entity=cfg.entity,
            mode=cfg.mode,
            name=cfg.name or summary.name,
            tags=list(cfg.tags),
            dir=str(wandb_dir),
            config={**run_config, "run_summary": summary.as_dict()},
            id=run_id,
            resume="allow",
        )
        write_atomic(id_file, self.run.id + "\n")

    def log(self, record: dict) -> None:
        self.run.log(scalars(record), step=record["step"])

    def close(self) -> None:
        self.run.finish()


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


def check_logger_packages(cfg: LoggerConfig) -> None:
    """Fail before training (on every rank alike) when a configured logger's package is not installed."""
    wanted = {
        "wandb": cfg.wandb is not None and cfg.wandb.mode != "disabled",
        "tensorboard": cfg.tensorboard is not None,
    }
    for package, needed in wanted.items():
        if needed and importlib.util.find_spec(package) is None:
            raise ConfigError(
                f"logger {package} is configured but the {package} package is not installed; "
                f"pip install {package}, or leave {package} out of logger=[...]"
            )


def _start_wandb(cfg: Config, summary: RunSummary) -> MetricLogger | None:
    run_config = OmegaConf.to_container(OmegaConf.structured(cfg))
    try:
        return WandbLogger(cfg.logger.wandb, run_config, summary)
    except Exception as err:  # a run must never depend on wandb's servers or a key being set
        reason = " ".join(str(err).split()) or type(err).__name__
        print(
            f"gptforge: warning: wandb logger off for this run ({reason}); the other loggers still record "
            "every metric; logger.wandb.mode=offline needs no key or network",
            file=sys.stderr,
            flush=True,
        )
        return None


def build_loggers(cfg: Config, summary: RunSummary) -> Loggers:
    """The loggers set in `cfg.logger`, writing into the summary's run directory."""
    lcfg, run_dir = cfg.logger, Path(summary.run_dir)
    loggers: list[MetricLogger | None] = []
    if lcfg.console is not None:
        loggers.append(ConsoleLogger(summary, lcfg.console.progress_bar))
    if lcfg.jsonl is not None:
        loggers.append(JsonlLogger(run_dir / lcfg.jsonl.filename, resume_step=summary.start_step))
    if lcfg.tensorboard is not None:
        loggers.append(TensorboardLogger(run_dir / lcfg.tensorboard.subdir, summary))
    if lcfg.wandb is not None and lcfg.wandb.mode != "disabled":
        loggers.append(_start_wandb(cfg, summary))
    return Loggers([logger for logger in loggers if logger is not None])
