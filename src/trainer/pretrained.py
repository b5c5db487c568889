"""Trained models from and to files: a checkpoint ready for inference, HF model directories, LoRA adapters.

The file side of `gptforge.models.hf` and `gptforge.models.lora`, which map names and tensors only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file
from torch import nn

from gptforge.config import Config, LoraConfig, ModelConfig
from gptforge.data import Tokenizer, load_tokenizer
from gptforge.errors import CheckpointError, ConfigError
from gptforge.models import GPT
from gptforge.models.hf import from_hf
from gptforge.models.layers import MLP, SwiGLU
from gptforge.models.lora import apply_lora, load_lora_state_dict, lora_state_dict
from gptforge.trainer.checkpoint import Checkpointer, verify

HF_PREFIX = "hf:"
HF_WEIGHTS = "model.safetensors"
LORA_FILE = "lora.safetensors"


@dataclass
class Pretrained:
    """A checkpoint loaded for inference: its resolved config, model (eval mode), tokenizer and directory."""

    cfg: Config
    model: GPT
    tokenizer: Tokenizer
    directory: Path


def find_checkpoint(path: str | Path) -> Path:
    """A verified step directory: `path` itself, or the newest valid one in a run or checkpoints/ dir."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; give a checkpoint step_<N> dir or a run directory")
    if (path / "trainer_state.json").is_file():
        problem = verify(path)
        if problem:
            raise CheckpointError(
                f"checkpoint {path} is not usable: {problem}; give another step_<N> dir, or the run "
                "directory for its newest valid checkpoint"
            )
        return path
    for root in (path / "checkpoints", path):
        try:
            found = Checkpointer(root, keep_last=1, is_main=True, barrier=lambda: None).latest_valid()
        except CheckpointError:
            raise CheckpointError(
                f"every checkpoint in {root} is incomplete or corrupt; give a run directory or step_<N> dir "
                "whose files match its manifest.json"
            ) from None
        if found is not None:
            return found
    raise CheckpointError(f"{path} holds no checkpoint; give a step_<N> dir or a run directory with one")


def read_config(directory: Path) -> Config:
    """The resolved `config.yaml` of a checkpoint, validated by the current schema."""
    saved = OmegaConf.load(directory / "config.yaml")
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), saved))


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Pretrained:
    """Model (LoRA adapters included, unmerged), tokenizer and config of a checkpoint of any strategy."""
    from gptforge.trainer.strategies.consolidated import consolidate_checkpoint

    directory = find_checkpoint(path)
    cfg = read_config(directory)
    model = GPT(cfg.model)
    apply_lora(model, cfg.model.lora)
    state, _ = consolidate_checkpoint(directory)
    if cfg.model.tie_embeddings:
        state.setdefault("lm_head.weight", state["wte.weight"])
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        detail = " ".join(str(err).split("\n\t")[1:2]) or str(err).splitlines()[0]
        raise CheckpointError(f"checkpoint {directory} does not fit its config.yaml: {detail}") from None
    return Pretrained(cfg, model.to(device).eval(), load_tokenizer(directory), directory)


def read_hf_dir(directory: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """`config.json` and the weights of a local HF model directory (safetensors, sharded or not, or .bin)."""
    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{directory} is not a Hugging Face model directory: it has no config.json")
    hf_config = json.loads(config_path.read_text())
    index = directory / f"{HF_WEIGHTS}.index.json"
    if (directory / HF_WEIGHTS).is_file():
        state = load_file(str(directory / HF_WEIGHTS))
    elif index.is_file():
        state = {}
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            state |= load_file(str(directory / shard))
    elif (directory / "pytorch_model.bin").is_file():
        state = torch.load(directory / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise CheckpointError(f"{directory} has no {HF_WEIGHTS}, sharded safetensors or pytorch_model.bin")
    return hf_config, state


def write_hf_dir(directory: str | Path, hf_config: dict, state: dict[str, torch.Tensor]) -> None:
    """Write `config.json` and `model.safetensors` (no `transformers` needed)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    save_file(state, str(directory / HF_WEIGHTS), metadata={"format": "pt"})


_SHAPE_FIELDS = (
    "flavour",
    "vocab_size",
    "block_size",
    "n_layer",
    "n_head",
    "kv_heads",
    "n_embd",
    "has_bias",
    "tie_embeddings",
)


def load_hf_weights(path: str | Path, model_cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Our state dict from an HF directory (`trainer.init_from=hf:<dir>`), checked against `model_cfg`.

    Checks the architecture fields first, so a mismatch names the model.* overrides that would fit.
    """
    directory = Path(str(path).removeprefix(HF_PREFIX))
    hf_config, hf_state = read_hf_dir(directory)
    theirs, state = from_hf(hf_config, hf_state)
    differ = [f for f in _SHAPE_FIELDS if getattr(theirs, f) != getattr(model_cfg, f)]
    ffn = "blocks.0.mlp.fc.weight" if theirs.flavour == "gpt2" else "blocks.0.mlp.up.weight"
    if not differ and state[ffn].size(0) != _hidden_size(model_cfg):
        differ.append("intermediate_size")
    if differ:
        wanted = " ".join(f"model.{_override_name(f)}={_override_value(theirs, f)}" for f in differ)
        raise ConfigError(f"trainer.init_from={path} is another architecture; set {wanted}")
    if theirs.rope_theta != model_cfg.rope_theta and theirs.flavour == "llama":
        raise ConfigError(f"trainer.init_from={path} has RoPE base {theirs.rope_theta}; set model.rope_theta")
    return state


def resolve_init_from(init_from: str, model_cfg: ModelConfig) -> str | Path:
    """What `trainer.init_from` loads, checked before anything is built: a checkpoint directory is
    verified and must hold `model_cfg`'s architecture (the error names the model.* overrides that fit)."""
    path = Path(init_from.removeprefix(HF_PREFIX))
    if not path.exists():
        raise CheckpointError(
            f"trainer.init_from={init_from} does not exist; give a checkpoint or run directory, "
            "a .safetensors file or hf:<dir>"
        )
    if init_from.startswith(HF_PREFIX) or not path.is_dir():
        return init_from  # files and HF directories are checked as they load
    directory = find_checkpoint(path)
    saved = read_config(directory)
    theirs = saved.model
    fields = [f for f in _SHAPE_FIELDS if f != "block_size" or theirs.flavour == "gpt2"]  # RoPE: any T
    differ = [f for f in fields if getattr(theirs, f) != getattr(model_cfg, f)]
    if not differ and _hidden_size(theirs) != _hidden_size(model_cfg):
        differ.append("intermediate_size")
    if differ:
        theirs = replace(theirs, intermediate_size=_hidden_size(theirs))
        wanted = " ".join(f"model.{_override_name(f)}={_override_value(theirs, f)}" for f in differ)
        # another vocabulary is usually another tokenizer: say which one the weights were trained with
        tokenizer = ""
        if "vocab_size" in differ:
            tokenizer = f" tokenizer={saved.tokenizer.name} (what it was trained with)"
        raise ConfigError(
            f"trainer.init_from={init_from} ({directory.name}) is another architecture; "
            f"set {wanted}{tokenizer}"
        )
    return directory


def _hidden_size(cfg: ModelConfig) -> int:
    with torch.device("meta"):  # sizes only: nothing is allocated
        mlp = SwiGLU(cfg) if cfg.flavour == "llama" else MLP(cfg)
    return (mlp.up if cfg.flavour == "llama" else mlp.fc).out_features


def _override_name(field_name: str) -> str:
    return {"kv_heads": "n_kv_head", "has_bias": "bias"}.get(field_name, field_name)


def _override_value(cfg: ModelConfig, field_name: str) -> str:
    value = getattr(cfg, field_name)
    return str(value).lower() if isinstance(value, bool) else str(value)


def save_lora_adapters(
    model_or_state: nn.Module | dict[str, torch.Tensor], directory: str | Path, cfg: LoraConfig
) -> Path:
    """Write the adapters alone to `<directory>/lora.safetensors`, their LoRA config in its metadata.

    Give the model, or a sharded strategy's `full_model_state_dict()` (gathered on every rank, written
    by rank 0).
    """
    path = Path(directory) / LORA_FILE
    metadata = {"format": "pt", "lora": json.dumps(OmegaConf.to_container(OmegaConf.structured(cfg)))}
    save_file(lora_state_dict(model_or_state), str(path), metadata=metadata)
    return path


def load_lora_adapters(model: nn.Module, path: str | Path) -> LoraConfig:
    """Wrap `model` per the adapter file's saved LoRA config and load the adapters; returns that config."""
    from safetensors import safe_open

    path = Path(path)
    path = path / LORA_FILE if path.is_dir() else path
    if not path.is_file():
        raise CheckpointError(f"no LoRA adapters at {path}")
    with safe_open(str(path), framework="pt") as f:
        cfg = LoraConfig(**json.loads(f.metadata()["lora"]))
    apply_lora(model, cfg)
    load_lora_state_dict(model, load_file(str(path)))
    return cfg
