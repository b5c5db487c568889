"""Validation loss and perplexity of a checkpoint, with the tokenizer stored in it, on CPU or GPU.

    python scripts/evaluate.py runs/my_run                                 # its own data config's val split
    python scripts/evaluate.py runs/my_run --data data.source=memmap data.path=shards/ --batches 100
    python scripts/evaluate.py runs/my_run --text held_out.txt --json eval.json

Without --text, batches come from the validation split of the checkpoint's data config (with --data
overrides, any source: text file, directory, JSONL, parquet, hub, memmap), drawn as the trainer draws them,
so the figure compares with the run's val_loss. With --text the whole file is scored once, in
consecutive windows of block_size tokens (each window starts without earlier context).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
from collections.abc import Iterator
from pathlib import Path

import torch
from omegaconf import OmegaConf

from gptforge.cli import run_cli
from gptforge.config import Config, DataConfig
from gptforge.data import BatchLayout, Tokenizer, build_data, read_text
from gptforge.errors import ConfigError, DataError
from gptforge.trainer.pretrained import load_checkpoint
from gptforge.trainer.strategies.base import resolve_device, resolve_precision

Batches = Iterator[tuple[torch.Tensor, torch.Tensor]]


def data_config(saved: DataConfig, overrides: list[str]) -> DataConfig:
    """The checkpoint's data config with `data.key=value` overrides, validated by the schema."""
    bad = [o for o in overrides if not o.startswith("data.") or "=" not in o]
    if bad:
        raise ConfigError(f"--data {bad[0]!r} is not a data.<key>=<value> override")
    dotlist = [o.removeprefix("data.") for o in overrides]
    merged = OmegaConf.merge(OmegaConf.structured(saved), OmegaConf.from_dotlist(dotlist))
    return OmegaConf.to_object(merged)


def eval_batches(
    cfg: Config, tokenizer: Tokenizer, text_file: Path | None, data: DataConfig, batch_size: int, batches: int
) -> tuple[Batches, str]:
    """(input_ids, targets) batches and a name for where they come from; the one user of gptforge.data."""
    block_size = cfg.model.block_size
    if text_file is not None:
        ids = torch.tensor(tokenizer.encode(read_text(text_file)))
        if ids.numel() < 2:
            raise DataError(f"{text_file} holds fewer than 2 tokens; nothing to score")
        return _consecutive_windows(ids, block_size, batch_size), str(text_file)
    layout = BatchLayout(block_size, batch_size, seed=cfg.seed, eval_batches=batches)
    _, make_val_batches = build_data(data, tokenizer, layout)
    if make_val_batches is None:
        raise DataError("the data config has no validation split; set data.val_fraction or data.val_path")
    return make_val_batches(), f"validation split of data.path={data.path}"


def _consecutive_windows(ids: torch.Tensor, block_size: int, batch_size: int) -> Batches:
    full = (ids.numel() - 1) // block_size
    inputs = ids[: full * block_size].view(full, block_size)  # (full, T)
    targets = ids[1 : full * block_size + 1].view(full, block_size)
    for start in range(0, full, batch_size):
        yield inputs[start : start + batch_size], targets[start : start + batch_size]
    if full * block_size + 1 < ids.numel():  # the tail, shorter than a block
        yield ids[full * block_size : -1].unsqueeze(0), ids[full * block_size + 1 :].unsqueeze(0)


@torch.no_grad()
def mean_loss(model: torch.nn.Module, batches: Batches, device: torch.device) -> tuple[float, int]:
    """Token-weighted mean cross-entropy (nats) over every batch, and the number of tokens scored."""
    dtype = resolve_precision("auto", device)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
    total, count = torch.zeros((), dtype=torch.float64, device=device), 0
    for inputs, targets in batches:
        with autocast:
            _, loss = model(inputs.to(device), targets.to(device))
        scored = int((targets != -100).sum())  # -100 marks targets that carry no loss
        total += loss.double() * scored
        count += scored
    return (total / count).item(), count


def main(argv: list[str] | None = None) -> dict:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("checkpoint", type=Path, help="a step_<N> dir, checkpoints/ folder or run dir")
    parser.add_argument("--text", type=Path, help="score this UTF-8 text file, all of it")
    parser.add_argument("--data", nargs="*", default=[], help="data.<key>=<value> overrides of its config")
    parser.add_argument("--batch-size", type=int, help="sequences per forward (default: the run's)")
    parser.add_argument("--batches", type=int, help="validation batches (default: trainer.eval_batches)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--json", type=Path, help="also write the result to this JSON file")
    args = parser.parse_args(argv)
    if args.text is not None and args.data:
        raise ConfigError("give --text or --data, not both")
    device = resolve_device(args.device)
    loaded = load_checkpoint(args.checkpoint, device)
    cfg = loaded.cfg
    batch_size = args.batch_size or cfg.trainer.micro_batch_size
    n_batches = args.batches or cfg.trainer.eval_batches
    if batch_size < 1 or n_batches < 1:
        raise ConfigError(f"--batch-size={batch_size} and --batches={n_batches} must be >= 1")
    data = data_config(cfg.data, args.data)
    batches, source = eval_batches(cfg, loaded.tokenizer, args.text, data, batch_size, n_batches)
    val_loss, tokens = mean_loss(loaded.model, batches, device)
    result = {
        "checkpoint": str(loaded.directory),
        "source": source,
        "tokens": tokens,
        "val_loss": val_loss,
        "perplexity": math.exp(min(val_loss, 50.0)),
    }
    ppl = result["perplexity"]
    print(f"{loaded.directory}: val_loss {val_loss:.4f}, perplexity {ppl:.3f} ({tokens} tokens)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    run_cli(main)
