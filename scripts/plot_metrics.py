"""Plot train/val loss, learning rate, tokens/s and downstream task scores against steps, into one PNG.

    python scripts/plot_metrics.py runs/shakespeare_char_cpu                    # -> <run_dir>/metrics.png
    python scripts/plot_metrics.py runs/a runs/b --labels baseline wide --out compare.png
    python scripts/plot_metrics.py runs/shakespeare_char_cpu-sweep             # every job of a sweep

Each run is a run directory holding metrics.jsonl (or a .jsonl file itself); a sweep directory stands for
its jobs, labelled by their overrides. The loss panel shows every logged point from the first step, a
smoothed curve over the raw one, and the validation loss on the same axes.
Task scores (eval.tasks: eval/<task>/<metric>, all in [0, 1]; BLEU shown divided by 100) get a fourth
panel when any run has them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gptforge.cli import HelpFormatter, run_cli
from gptforge.errors import ConfigError, DataError
from gptforge.records import read_metrics as read_records
from gptforge.sweep import job_dirs

PANELS = (("loss", "loss"), ("lr", "learning rate"), ("tokens_per_sec", "tokens/s (global)"))
SMOOTHING = 0.9  # weight of the running average in the smoothed loss (TensorBoard's default is 0.6-0.9)
TASK_PREFIX = "eval/"  # gptforge.eval's task records: eval/<task>/<metric>


def read_metrics(run: Path) -> list[dict]:
    """The records of a run's metrics.jsonl (or of the .jsonl file given); a torn last line is skipped."""
    path = run if run.suffix == ".jsonl" else run / "metrics.jsonl"
    if not path.is_file():
        raise DataError(f"{path} does not exist; give a run directory that holds metrics.jsonl")
    records = read_records(path)
    if not records:
        raise DataError(f"{path} holds no JSON records; is it a gptforge metrics file?")
    return records


def series(records: list[dict], key: str, kind: str) -> tuple[list[int], list[float]]:
    """Steps and values of `key` over the train records (kind="train") or eval records (kind="val")."""
    if kind == "val":
        chosen = [r for r in records if "val_loss" in r]
    else:
        chosen = [r for r in records if "event" not in r and "val_loss" not in r and r.get(key) is not None]
    return [r["step"] for r in chosen if key in r], [r[key] for r in chosen if key in r]


def smoothed(values: list[float], weight: float = SMOOTHING) -> list[float]:
    """An exponential moving average, debiased at the start so the curve begins at the first value."""
    average, out = 0.0, []
    for i, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        out.append(average / (1 - weight**i))
    return out


def expand(runs: list[Path]) -> list[Path]:
    """Runs as given, a sweep directory (no metrics.jsonl of its own) replaced by its jobs."""
    expanded = []
    for run in runs:
        jobs = job_dirs(run) if run.is_dir() and not (run / "metrics.jsonl").exists() else []
        expanded.extend(jobs or [run])
    return expanded


def task_series(records: list[dict]) -> dict[str, tuple[list[int], list[float]]]:
    """`<task>/<metric>` -> steps and values of the task scores in the records (BLEU / 100)."""
    found: dict[str, tuple[list[int], list[float]]] = {}
    for record in records:
        for key, value in record.items():
            name = key.removeprefix(TASK_PREFIX)
            if key.startswith(TASK_PREFIX) and not name.endswith("/examples"):
                steps, values = found.setdefault(name + ("/100" if name.endswith("/bleu") else ""), ([], []))
                steps.append(record["step"])
                values.append(value / 100 if name.endswith("/bleu") else value)
    return found


def plot(runs: dict[str, list[dict]], out: Path) -> None:
    """One figure, a panel per metric, a colour per run; val loss dashed on the loss panel, task scores
    (one line style per task metric) on a fourth panel when there are any."""
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("plot_metrics.py needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")  # files only: no display needed on a cluster node
    import matplotlib.pyplot as plt

    tasks = {label: task_series(records) for label, records in runs.items()}
    n_panels = len(PANELS) + any(tasks.values())
    fig, axes = plt.subplots(1, n_panels, figsize=(5 * n_panels, 4), constrained_layout=True)
    for index, (label, records) in enumerate(runs.items()):
        colour = f"C{index % 10}"
        for ax, (key, title) in zip(axes, PANELS, strict=False):
            steps, values = series(records, key, "train")
            if key == "loss":
                ax.plot(steps, values, color=colour, alpha=0.3, linewidth=0.8)
                ax.plot(steps, smoothed(values), color=colour, label=f"{label} train (smoothed)")
            else:
                ax.plot(steps, values, color=colour, label=label)
            ax.set_title(title)
            ax.set_xlabel("step")
            ax.set_xlim(left=0)
        val_steps, val_losses = series(records, "val_loss", "val")
        if val_steps:
            axes[0].plot(
                val_steps, val_losses, color=colour, linestyle="--", marker="o", label=f"{label} val"
            )
        for number, (name, (steps, values)) in enumerate(sorted(tasks[label].items())):
            style = ("-", "--", ":", "-.")[number % 4]
            axes[-1].plot(steps, values, color=colour, linestyle=style, marker=".", label=f"{label} {name}")
            axes[-1].set_title("downstream tasks")
            axes[-1].set_xlabel("step")
    axes[1].ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def unique_labels(runs: list[Path]) -> list[str]:
    """Run directory names, or longer paths where two names clash."""
    names = [run.name if run.suffix != ".jsonl" else run.parent.name for run in runs]
    return names if len(set(names)) == len(names) else [str(run) for run in runs]


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument(
        "runs", nargs="+", type=Path, help="run or sweep directories (or metrics .jsonl files)"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="PNG to write (default: <first run>/metrics.png)"
    )
    parser.add_argument(
        "--labels", nargs="+", default=None, help="legend names, one per run (default: dir names)"
    )
    args = parser.parse_args(argv)
    given_sweep = len(args.runs) == 1 and not (args.runs[0] / "metrics.jsonl").exists()
    runs = expand(args.runs)
    labels = args.labels or unique_labels(runs)
    if len(labels) != len(runs):
        raise ConfigError(f"--labels gives {len(labels)} names for {len(runs)} runs; give one per run")
    metrics = {label: read_metrics(run) for label, run in zip(labels, runs, strict=True)}
    first = args.runs[0] if given_sweep else (runs[0] if runs[0].suffix != ".jsonl" else runs[0].parent)
    out = args.out or first / "metrics.png"
    plot(metrics, out)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    run_cli(main)
