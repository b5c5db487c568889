"""One plain safetensors state dict from any checkpoint, and a model started from it (`trainer.init_from`).

The file holds model weights only, in fp32 where the checkpoint has them (DeepSpeed's master weights);
optimizer state, step, schedule and data position are left behind: a run started from it is a new run.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file
from torch import nn

from gptforge.errors import CheckpointError
from gptforge.trainer.checkpoint import find_checkpoint, save_safetensors


def consolidate_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The whole model's weights from a checkpoint of any strategy and world size, and metadata about it."""
    from gptforge.trainer.strategies import strategy_class

    directory = find_checkpoint(Path(path))  # verified against its manifest, newest valid first
    cfg = OmegaConf.load(directory / "config.yaml")
    state = strategy_class(cfg.strategy.name).consolidate(directory)
    metadata = {
        "format": "pt",
        "source": str(directory),
        "strategy": cfg.strategy.name,
        "model_config": json.dumps(OmegaConf.to_container(cfg.model)),
    }
    return _without_aliases(state), metadata


def _without_aliases(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # a tied weight (lm_head.weight is wte.weight) is stored once, under its first name: safetensors
    # refuses shared tensors, and load_initial_weights restores the tie from the model itself
    seen: set[int] = set()
    unique = {}
    for key, tensor in state.items():
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        unique[key] = tensor.detach().cpu().contiguous()
    return unique


def save_consolidated(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors(state, path, metadata)


def load_initial_weights(model: nn.Module, path: str | Path) -> None:
    """Copy weights into `model` from a consolidated .safetensors file, any checkpoint directory, or
    `hf:<dir>`, a local Hugging Face GPT-2 / Llama model directory."""
    if str(path).startswith("hf:"):
        from gptforge.trainer.pretrained import load_hf_weights  # imported here: it imports the trainer

        state = load_hf_weights(path, model.cfg)
    elif Path(path).is_file():
        state = load_file(str(path))
    elif Path(path).is_dir():
        state, _ = consolidate_checkpoint(Path(path))
    else:
        raise CheckpointError(f"trainer.init_from={path} does not exist")
    missing, unexpected = _load(model, state, path)
    names_of = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names_of.setdefault(id(param), []).append(name)
    tied_ok = {name for names in names_of.values() if any(n in state for n in names) for name in names}
    missing = [k for k in missing if k not in tied_ok]
    if missing or unexpected:
        raise CheckpointError(
            f"trainer.init_from={path} does not fit the model: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}; build the same model.* as the run that saved it"
        )


def _load(model: nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> tuple[list[str], list[str]]:
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        detail = " ".join(str(err).split("\n\t")[1:2]) or str(err).splitlines()[0]
        raise CheckpointError(f"trainer.init_from={path} does not fit the model: {detail}") from err
    return list(result.missing_keys), list(result.unexpected_keys)
