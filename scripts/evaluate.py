"""Evaluate a checkpoint, with the tokenizer stored in it, on CPU or GPU: validation loss and perplexity, or
downstream tasks (--tasks).

    python scripts/evaluate.py runs/my_run                                 # its own data config's val split
    python scripts/evaluate.py runs/my_run --data data.source=memmap data.path=shards/ --batches 100
    python scripts/evaluate.py runs/my_run --text held_out.txt --json eval.json
    python scripts/evaluate.py runs/my_run --tasks next_line.yaml qa.jsonl --num-fewshot 5 --json scores.json

Without --text, batches come from the validation split of the checkpoint's data config (with --data
overrides, any source: text file, directory, JSONL, parquet, hub, memmap), drawn as the trainer draws them,
so the figure compares with the run's val_loss. With --text the whole file is scored once, in
consecutive windows of block_size tokens (each window starts without earlier context). With --tasks each
task (a task YAML, a task data file, hf:<dataset> or sft_val) is scored as the training loop scores
eval.tasks (docs/EVALUATION.md): a table is printed, and --json writes the scores.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gptforge.cli import run_cli
from gptforge.config import EvalConfig
from gptforge.errors import ConfigError
from gptforge.eval.evaluator import build_task_evaluator, format_table
from gptforge.eval.host import LocalHost
from gptforge.eval.loss import data_config, loss_batches, mean_loss, perplexity
from gptforge.trainer.checkpoint import Pretrained, load_checkpoint
from gptforge.trainer.devices import resolve_device


def main(argv: list[str] | None = None) -> dict:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("checkpoint", type=Path, help="a step_<N> dir, checkpoints/ folder or run dir")
    parser.add_argument("--text", type=Path, help="score this UTF-8 text file, all of it")
    parser.add_argument("--data", nargs="*", default=[], help="data.<key>=<value> overrides of its config")
    parser.add_argument("--batch-size", type=int, help="sequences per forward (default: the run's)")
    parser.add_argument("--batches", type=int, help="validation batches (default: trainer.eval_batches)")
    parser.add_argument("--tasks", nargs="+", help="downstream tasks to score instead of the loss")
    parser.add_argument("--limit", type=int, help="--tasks: examples per task (its first N)")
    parser.add_argument("--num-fewshot", type=int, help="--tasks: k-shot examples (default: each task's)")
    parser.add_argument("--max-new-tokens", type=int, help="--tasks: tokens per generated answer")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--json", type=Path, help="also write the result to this JSON file")
    args = parser.parse_args(argv)
    if args.text is not None and args.data:
        raise ConfigError("give --text or --data, not both")
    if args.tasks and (args.text is not None or args.data):
        raise ConfigError("--tasks scores tasks, not the loss: leave out --text and --data")
    device = resolve_device(args.device)
    loaded = load_checkpoint(args.checkpoint, device)
    host = LocalHost.auto(loaded.model, device)
    result = evaluate_tasks(loaded, host, args) if args.tasks else evaluate_loss(loaded, host, args)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


def evaluate_loss(loaded: Pretrained, host: LocalHost, args: argparse.Namespace) -> dict:
    cfg = loaded.cfg
    batch_size = args.batch_size or cfg.trainer.micro_batch_size
    n_batches = args.batches or cfg.trainer.eval_batches
    if batch_size < 1 or n_batches < 1:
        raise ConfigError(f"--batch-size={batch_size} and --batches={n_batches} must be >= 1")
    data = data_config(cfg.data, args.data)
    batches, source = loss_batches(cfg, loaded.tokenizer, args.text, data, batch_size, n_batches)
    val_loss, tokens = mean_loss(host, batches)
    ppl = perplexity(val_loss)
    print(f"{loaded.directory}: val_loss {val_loss:.4f}, perplexity {ppl:.3f} ({tokens} tokens)")
    return {
        "checkpoint": str(loaded.directory),
        "source": source,
        "tokens": tokens,
        "val_loss": val_loss,
        "perplexity": ppl,
    }


def evaluate_tasks(loaded: Pretrained, host: LocalHost, args: argparse.Namespace) -> dict:
    eval_cfg = EvalConfig(
        tasks=args.tasks, limit=args.limit, num_fewshot=args.num_fewshot, max_new_tokens=args.max_new_tokens
    )
    evaluator = build_task_evaluator(eval_cfg, loaded.tokenizer, loaded.cfg.model.block_size, loaded.cfg.data)
    scores = evaluator.evaluate(host)
    print(f"{loaded.directory}:\n{format_table(scores, evaluator.tasks)}")
    shots = {task.name: task.num_fewshot for task in evaluator.tasks}
    tasks = {name: {**metrics, "num_fewshot": shots[name]} for name, metrics in scores.items()}
    return {"checkpoint": str(loaded.directory), "tasks": tasks}


if __name__ == "__main__":
    run_cli(main)
