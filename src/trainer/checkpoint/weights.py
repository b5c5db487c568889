"""Weights from and to files: a checkpoint consolidated to one safetensors file, the weights a run starts
from (`trainer.init_from`), a checkpoint loaded for inference, HF model directories, LoRA adapter files.

The file side of `gptforge.models.hf` and `gptforge.models.lora`, which map names and tensors only. A
consolidated file holds model weights only, in fp32 where the checkpoint has them (DeepSpeed's master
weights); optimizer state, step, schedule and data position are left behind: a run started from it is a
new run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from omegaconf import OmegaConf
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn

from gptforge.config import Config, LoraConfig, ModelConfig
from gptforge.data import Tokenizer, load_tokenizer
from gptforge.data.tokenizers import TOKENIZER_FILE
from gptforge.errors import CheckpointError, ConfigError
from gptforge.models import GPT
from gptforge.models.hf import from_hf, model_config_from_hf
from gptforge.models.lora import apply_lora, load_lora_state_dict, lora_state_dict
from gptforge.trainer.checkpoint.layout import CONFIG, HF_CONFIG, HF_PREFIX, HF_WEIGHTS, LORA_FILE
from gptforge.trainer.checkpoint.store import find_checkpoint, save_safetensors


@dataclass
class Pretrained:
    """A checkpoint loaded for inference: its resolved config, model (eval mode), tokenizer and directory."""

    cfg: Config
    model: GPT
    tokenizer: Tokenizer
    directory: Path


def read_config(directory: Path) -> Config:
    """The resolved `config.yaml` of a checkpoint, validated by the current schema."""
    saved = OmegaConf.load(directory / CONFIG)
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), saved))


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Pretrained:
    """Model (LoRA adapters included, unmerged), tokenizer and config of a checkpoint of any strategy."""
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


def read_hf_dir(directory: str | Path, weights: bool = True) -> tuple[dict, dict[str, torch.Tensor]]:
    """`config.json` and the weights (unless `weights=False`) of a local HF model directory (safetensors,
    sharded or not, or .bin)."""
    directory = Path(directory)
    config_path = directory / HF_CONFIG
    if not config_path.is_file():
        raise CheckpointError(f"{directory} is not a Hugging Face model directory: it has no config.json")
    hf_config = json.loads(config_path.read_text())
    if not weights:
        return hf_config, {}
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
    (directory / HF_CONFIG).write_text(json.dumps(hf_config, indent=2) + "\n")
    save_safetensors(state, directory / HF_WEIGHTS, {"format": "pt"})


_SHAPE_FIELDS = ("vocab_size", "block_size", "n_layer", "n_head", "kv_heads", "n_embd", "mlp_hidden_size")


def _shape(cfg: ModelConfig) -> dict[str, object]:
    """What decides the weights' names and shapes: the components in effect and the sizes."""
    return (
        vars(cfg.components)
        | {name: getattr(cfg, name) for name in _SHAPE_FIELDS}
        | {"tie_embeddings": cfg.tie_embeddings}
    )


def load_hf_weights(path: str | Path, model_cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Our state dict from an HF directory (`trainer.init_from=hf:<dir>`), checked against `model_cfg`.

    Checks the architecture fields first, so a mismatch names the model.* overrides that would fit.
    """
    directory = Path(str(path).removeprefix(HF_PREFIX))
    hf_config, hf_state = read_hf_dir(directory)
    theirs, state = from_hf(hf_config, hf_state)
    their_shape, own_shape = _shape(theirs), _shape(model_cfg)
    differ = [name for name in their_shape if their_shape[name] != own_shape[name]]
    if differ:
        wanted = " ".join(f"model.{_override_name(f)}={_override_value(their_shape[f])}" for f in differ)
        raise ConfigError(f"trainer.init_from={path} is another architecture; set {wanted}")
    if theirs.rope_theta != model_cfg.rope_theta and theirs.components.position == "rope":
        raise ConfigError(f"trainer.init_from={path} has RoPE base {theirs.rope_theta}; set model.rope_theta")
    return state


def _override_name(field_name: str) -> str:
    return {"kv_heads": "n_kv_head", "mlp_hidden_size": "intermediate_size"}.get(field_name, field_name)


def _override_value(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


@dataclass(frozen=True)
class InitSource:
    """What `trainer.init_from` names: the weights to load, and the architecture and tokenizer saved with
    them, which the run adopts (None where the file does not say: the run's own model.* must fit)."""

    spec: str  # as the user gave it
    weights: str | Path  # what load_initial_weights reads: a checkpoint dir, a .safetensors file or hf:<dir>
    model: ModelConfig | None
    tokenizer_dir: Path | None

    def describe(self) -> str:
        adopted = [
            part for part, known in (("model.*", self.model), ("tokenizer", self.tokenizer_dir)) if known
        ]
        taken = f" ({' and '.join(adopted)} from it)" if adopted else ""
        return f"{self.weights}{taken}"


def resolve_init_source(init_from: str) -> InitSource:
    """The verified source of `trainer.init_from`, read before anything is built."""
    path = Path(init_from.removeprefix(HF_PREFIX))
    if not path.exists():
        raise CheckpointError(
            f"trainer.init_from={init_from} does not exist; give a checkpoint or run directory, "
            "a .safetensors file or hf:<dir>"
        )
    if init_from.startswith(HF_PREFIX):
        hf_config, _ = read_hf_dir(path, weights=False)
        tokenizer_dir = path if (path / TOKENIZER_FILE).is_file() else None
        return InitSource(init_from, init_from, model_config_from_hf(hf_config), tokenizer_dir)
    if path.is_dir():
        directory = find_checkpoint(path)
        return InitSource(init_from, directory, read_config(directory).model, directory)
    metadata = _safetensors_metadata(path)
    model = None
    if "model_config" in metadata:
        saved = OmegaConf.merge(OmegaConf.structured(ModelConfig), json.loads(metadata["model_config"]))
        model = OmegaConf.to_object(saved)
    # beside the file, or in the checkpoint it was consolidated from
    places = [path.parent, *([Path(metadata["source"])] if metadata.get("source") else [])]
    tokenizer_dir = next((place for place in places if (place / TOKENIZER_FILE).is_file()), None)
    return InitSource(init_from, path, model, tokenizer_dir)


def _safetensors_metadata(path: Path) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as weights:
            return weights.metadata() or {}
    except SafetensorError as err:
        raise CheckpointError(f"trainer.init_from={path} is not a safetensors file: {err}") from None


# what a run keeps of its own model config when it adopts another's architecture: how it trains
TRAINING_FIELDS = ("dropout", "lora")


def adopt_architecture(own: ModelConfig, saved: ModelConfig) -> ModelConfig:
    """The saved architecture with this run's training-time fields (dropout, LoRA)."""
    return replace(saved, **{name: getattr(own, name) for name in TRAINING_FIELDS})


def save_lora_adapters(
    model_or_state: nn.Module | dict[str, torch.Tensor], directory: str | Path, cfg: LoraConfig
) -> Path:
    """Write the adapters alone to `<directory>/lora.safetensors`, their LoRA config in its metadata.

    Give the model, or a sharded strategy's `full_model_state_dict()` (gathered on every rank, written
    by rank 0).
    """
    path = Path(directory) / LORA_FILE
    metadata = {"format": "pt", "lora": json.dumps(OmegaConf.to_container(OmegaConf.structured(cfg)))}
    save_safetensors(lora_state_dict(model_or_state), path, metadata)
    return path


def load_lora_adapters(model: nn.Module, path: str | Path) -> LoraConfig:
    """Wrap `model` per the adapter file's saved LoRA config and load the adapters; returns that config."""
    path = Path(path)
    path = path / LORA_FILE if path.is_dir() else path
    if not path.is_file():
        raise CheckpointError(f"no LoRA adapters at {path}")
    with safe_open(str(path), framework="pt") as f:
        cfg = LoraConfig(**json.loads(f.metadata()["lora"]))
    apply_lora(model, cfg)
    load_lora_state_dict(model, load_file(str(path)))
    return cfg


def consolidate_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The whole model's weights from a checkpoint of any strategy and world size, and metadata about it."""
    from gptforge.trainer.strategies import strategy_class

    directory = find_checkpoint(Path(path))  # verified against its manifest, newest valid first
    cfg = OmegaConf.load(directory / CONFIG)
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


def load_initial_weights(model: nn.Module, path: str | Path) -> dict[str, torch.Tensor]:
    """Copy weights into `model` from a consolidated .safetensors file, any checkpoint directory, or
    `hf:<dir>`, a local Hugging Face GPT-2 / Llama model directory; returns them as read.

    A model on the meta device is only checked against them (names and shapes): a sharded strategy then
    spreads the returned state over its ranks."""
    if str(path).startswith(HF_PREFIX):
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
    return state


def _load(model: nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> tuple[list[str], list[str]]:
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        detail = " ".join(str(err).split("\n\t")[1:2]) or str(err).splitlines()[0]
        raise CheckpointError(f"trainer.init_from={path} does not fit the model: {detail}") from err
    return list(result.missing_keys), list(result.unexpected_keys)
