"""Validation loss and perplexity: token-weighted cross-entropy over batches, for the trainer and checkpoints.

Without a text file, batches come from the validation split of a data config, drawn as the trainer draws
them, so a checkpoint's figure compares with its run's val_loss. A text file is scored whole, once, in
consecutive windows of block_size tokens (each window starts without earlier context).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from omegaconf import OmegaConf

from gptforge.config import Config, DataConfig
from gptforge.data import BatchLayout, Tokenizer, build_data, read_text
from gptforge.errors import ConfigError, DataError
from gptforge.models.gpt import IGNORE_INDEX

if TYPE_CHECKING:  # host.py imports gptforge.trainer, which imports this module
    from gptforge.eval.host import EvalHost

Batches = Iterator[tuple[torch.Tensor, torch.Tensor]]
BatchLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (inputs, targets) -> mean loss


def data_config(saved: DataConfig, overrides: list[str]) -> DataConfig:
    """A data config with `data.key=value` overrides, validated by the schema."""
    bad = [o for o in overrides if not o.startswith("data.") or "=" not in o]
    if bad:
        raise ConfigError(f"--data {bad[0]!r} is not a data.<key>=<value> override")
    dotlist = [o.removeprefix("data.") for o in overrides]
    merged = OmegaConf.merge(OmegaConf.structured(saved), OmegaConf.from_dotlist(dotlist))
    return OmegaConf.to_object(merged)


def loss_batches(
    cfg: Config, tokenizer: Tokenizer, text_file: Path | None, data: DataConfig, batch_size: int, batches: int
) -> tuple[Batches, str]:
    """(input_ids, targets) batches of a text file or of `data`'s validation split, and their source."""
    block_size = cfg.model.block_size
    if text_file is not None:
        ids = torch.tensor(tokenizer.encode(read_text(text_file)))
        if ids.numel() < 2:
            raise DataError(f"{text_file} holds fewer than 2 tokens; nothing to score")
        return consecutive_windows(ids, block_size, batch_size), str(text_file)
    layout = BatchLayout(block_size, batch_size, seed=cfg.seed, eval_batches=batches)
    _, make_val_batches = build_data(data, tokenizer, layout)
    if make_val_batches is None:
        raise DataError("the data config has no validation split; set data.val_fraction or data.val_path")
    return make_val_batches(), f"validation split of data.path={data.path}"


def consecutive_windows(ids: torch.Tensor, block_size: int, batch_size: int) -> Batches:
    """Every token of `ids` but the first as a target once: full windows, then the shorter tail."""
    full = (ids.numel() - 1) // block_size
    inputs = ids[: full * block_size].view(full, block_size)  # (full, T)
    targets = ids[1 : full * block_size + 1].view(full, block_size)
    for start in range(0, full, batch_size):
        yield inputs[start : start + batch_size], targets[start : start + batch_size]
    if full * block_size + 1 < ids.numel():  # the tail, shorter than a block
        yield ids[full * block_size : -1].unsqueeze(0), ids[full * block_size + 1 :].unsqueeze(0)


def loss_sums(batch_loss: BatchLoss, batches: Batches) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy (nats, float64) over every scored target of every batch, and their number.

    `batch_loss` gives a batch's mean over the targets that are not IGNORE_INDEX; a batch with none adds
    nothing.
    """
    total, tokens = None, 0
    for inputs, targets in batches:
        scored = int((targets != IGNORE_INDEX).sum())
        if scored:
            summed = batch_loss(inputs, targets).double() * scored  # on the model's device
            total = summed if total is None else total + summed
            tokens += scored
    return (torch.zeros((), dtype=torch.float64) if total is None else total), tokens


@torch.no_grad()
def mean_loss(host: EvalHost, batches: Batches) -> tuple[float, int]:
    """Token-weighted mean cross-entropy (nats) of the host's model over the batches, and the tokens."""

    def batch_loss(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with host.autocast():
            return host.model(inputs.to(host.device), targets.to(host.device))[1]

    total, tokens = loss_sums(batch_loss, batches)
    if not tokens:
        raise DataError("the batches hold no scored targets; nothing to evaluate")
    return total.item() / tokens, tokens


def perplexity(loss: float) -> float:
    """exp(loss), capped where it would overflow."""
    return math.exp(min(loss, 50.0))
