"""The names of everything a run directory and a checkpoint hold: the one place they are spelled.

<out_dir>/
  config.yaml, tokenizer_meta.json (+ the tokenizer's own file), metrics.jsonl, train.log, .gptforge.lock
  checkpoints/
    latest                     the name of the newest committed checkpoint
    step_<N>/                  one checkpoint, published by one rename once complete
      manifest.json            size and sha256 of every other file: written last, the commit marker
      trainer_state.json       step, tokens seen, world size, global batch, config hash, guard state
      config.yaml, tokenizer_meta.json (+ file)
      rank_<r>.pt              RNG states and data position of rank r
      model.pt, optimizer.pt   strategy=single/ddp (rank 0's plain state dicts)
      dcp/                     strategy=fsdp: torch.distributed.checkpoint shards
      deepspeed/               strategy=deepspeed: the engine's own files
      lora.safetensors         LoRA adapters alone, when model.lora.rank > 0
    .tmp-step_<N>/, .pruned-step_<N>/, step_<N>.damaged-<time>/   never read as checkpoints
"""

from __future__ import annotations

import re
from pathlib import Path

CHECKPOINTS = "checkpoints"
CONFIG = "config.yaml"
WANDB_ID_FILE = "wandb_run_id"  # the wandb run a resume continues
MANIFEST = "manifest.json"
TRAINER_STATE = "trainer_state.json"
LATEST = "latest"
STEP_DIR = re.compile(r"^step_(\d+)$")
TMP_PREFIX = ".tmp-"  # a save in progress
PRUNED_PREFIX = ".pruned-"  # a checkpoint being deleted: out of the step_<N> namespace first
MODEL_FILE = "model.pt"
OPTIMIZER_FILE = "optimizer.pt"
DCP_DIR = "dcp"
DEEPSPEED_DIR = "deepspeed"
LORA_FILE = "lora.safetensors"
# a Hugging Face model directory (scripts/export_hf.py writes one; trainer.init_from=hf:<dir> reads one)
HF_PREFIX = "hf:"
HF_CONFIG = "config.json"
HF_WEIGHTS = "model.safetensors"


def step_dir(root: Path, step: int) -> Path:
    return Path(root) / f"step_{step}"


def rank_file(directory: Path, rank: int) -> Path:
    return Path(directory) / f"rank_{rank}.pt"


def step_of(directory: Path) -> int:
    return int(STEP_DIR.match(directory.name).group(1))
