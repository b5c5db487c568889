"""Plot train/val loss, learning rate, tokens/s and downstream task scores against steps, into one PNG.

    python scripts/plot_metrics.py runs/shakespeare_char_cpu                    # -> <run_dir>/metrics.png
    python scripts/plot_metrics.py runs/a runs/b --labels baseline wide --out compare.png

Each run is a run directory holding metrics.jsonl (or a .jsonl file itself); runs share each panel.
Task scores (eval.tasks: eval/<task>/<metric>, all in [0, 1]; BLEU shown divided by 100) get a fourth
panel when any run has them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gptforge.errors import ConfigError, DataError

PANELS = (("loss", "loss"), ("lr", "learning rate"), ("tokens_per_sec", "tokens/s (global)"))
TASK_PREFIX = "eval/"  # gptforge.eval's task records: eval/<task>/<metric>


def read_metrics(run: Path) -> list[dict]:
    """The records of a run's metrics.jsonl (or of the .jsonl file given)."""
    path = run if run.suffix == ".jsonl" else run / "metrics.jsonl"
    if not path.is_file():
        raise DataError(f"{path} does not exist; give a run directory that holds metrics.jsonl")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise DataError(
                    f"{path}:{number} is not JSON ({err.msg}); is it a gptforge metrics file?"
                ) from err
    return records


def series(records: list[dict], key: str, kind: str) -> tuple[list[int], list[float]]:
    """Steps and values of `key` over the train records (kind="train") or eval records (kind="val")."""
    if kind == "val":
        chosen = [r for r in records if "val_loss" in r]
    else:
        chosen = [r for r in records if "event" not in r and "val_loss" not in r and r.get(key) is not None]
    return [r["step"] for r in chosen if key in r], [r[key] for r in chosen if key in r]


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
            ax.plot(steps, values, color=colour, label=f"{label} train" if key == "loss" else label)
            ax.set_title(title)
            ax.set_xlabel("step")
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (or metrics .jsonl files)")
    parser.add_argument(
        "--out", type=Path, default=None, help="PNG to write; default <first run>/metrics.png"
    )
    parser.add_argument("--labels", nargs="+", default=None, help="legend names, one per run")
    args = parser.parse_args(argv)
    labels = args.labels or unique_labels(args.runs)
    if len(labels) != len(args.runs):
        raise ConfigError(f"--labels gives {len(labels)} names for {len(args.runs)} runs; give one per run")
    runs = {label: read_metrics(run) for label, run in zip(labels, args.runs, strict=True)}
    first = args.runs[0] if args.runs[0].suffix != ".jsonl" else args.runs[0].parent
    out = args.out or first / "metrics.png"
    plot(runs, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    try:
        main()
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
