"""Every speedrun switch at once, on 2 gloo ranks: they compose with DDP and FSDP2 and train."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from launch_utils import TINY_RUN, check, torchrun, train_losses
from omegaconf import OmegaConf

pytestmark = pytest.mark.multiprocess

SWITCHES = [
    "model.qk_norm=true",
    "model.logit_softcap=15",
    "model.mlp=relu2",
    "model.zero_init_proj=true",
    "model.z_loss=1e-4",
    "model.doc_mask=true",
    "scheduler=wsd",
    "scheduler.warmup_steps=2",
    "trainer.max_steps=8",
]
# Muon needs whole matrices: FSDP2 shards them, so it runs everything else there (and refuses Muon)
OPTIMIZER = {"ddp": ["strategy=ddp", "optim=muon"], "fsdp": ["strategy=fsdp"]}


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_all_switches_train_on_two_ranks(tmp_path: Path, strategy: str) -> None:
    corpus = tmp_path / "corpus.txt"  # paragraphs: documents packed with EOS between them
    corpus.write_text("\n\n".join(f"doc {i}: " + "the quick brown fox. " * (1 + i % 3) for i in range(80)))
    data = ["data=local", f"data.path={corpus}", "tokenizer=byte", "data.val_fraction=0.1"]
    out_dir = tmp_path / "run"
    check(torchrun([*TINY_RUN, *data, *SWITCHES, *OPTIMIZER[strategy], f"out_dir={out_dir}"]))
    saved = OmegaConf.load(out_dir / "config.yaml")
    assert saved.model.doc_mask and saved.model.eos_id == 256  # the byte tokenizer's EOS, set at plan time
    assert saved.optim.name == ("muon" if strategy == "ddp" else "adamw")
    losses = train_losses(out_dir)
    assert sorted(losses) == list(range(1, 9)) and all(math.isfinite(v) for v in losses.values())
    assert losses[8] < losses[1] - 0.5
