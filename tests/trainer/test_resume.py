"""No silent overwrite: a start in a used out_dir resumes its run, reports safe changes, refuses others."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from gptforge.config import Config, DataConfig, ModelConfig, StrategyConfig, TrainerConfig
from gptforge.errors import ConfigError, LaunchError
from gptforge.trainer import train
from gptforge.trainer.lock import LOCK_FILE
from gptforge.trainer.resume import check_layout, config_changes, config_hash, set_aside
from gptforge.trainer.strategies.mesh import MeshShape

QUICK = ["trainer.threads=1", "trainer.eval_every=0", "trainer.log_every=1", "scheduler.warmup_steps=1"]


def as_dict(cfg: Config) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg))


def changed(**trainer_or_model) -> dict:
    """The default config with `group__key=value` changes, as a plain dict."""
    config = as_dict(Config(model=ModelConfig(vocab_size=66)))
    for dotted, value in trainer_or_model.items():
        group, key = dotted.split("__")
        config[group][key] = value
    return config


def tree_digest(directory: Path) -> dict[str, str]:
    """sha256 of every file under `directory`, by relative path: equal digests, nothing changed (the run
    directory's lock, which records who holds it, aside)."""
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name != LOCK_FILE
    }


@pytest.mark.parametrize(
    "change",
    [
        {"trainer__max_steps": 5000},
        {"trainer__checkpoint_every": 7, "trainer__keep_last": 9, "trainer__log_every": 3},
        {"trainer__profile": True, "trainer__sample_tokens": 100, "trainer__eval_every": 11},
        {"logger__jsonl": {"filename": "other.jsonl"}},
        {"strategy__activation_checkpointing": True},
    ],
)
def test_keys_safe_to_change_are_reported_not_refused(change: dict) -> None:
    safe, unsafe = config_changes(changed(), changed(**change))
    assert unsafe == [] and safe
    assert config_hash(changed(), 1) == config_hash(changed(**change), 1)


@pytest.mark.parametrize(
    ("change", "culprit"),
    [
        ({"optim__lr": 3e-4}, "optim.lr: 0.001 -> 0.0003"),
        ({"model__n_layer": 8}, "model.n_layer: 4 -> 8"),
        ({"model__dropout": 0.1}, "model.dropout: 0.0 -> 0.1"),
        ({"data__path": "other.txt"}, "data.path"),
        ({"tokenizer__name": "byte"}, "tokenizer.name"),
        ({"scheduler__name": "wsd"}, "scheduler.name"),
        ({"trainer__micro_batch_size": 6}, "trainer.micro_batch_size: 12 -> 6"),
        ({"strategy__name": "fsdp"}, "strategy.name"),
    ],
)
def test_other_changes_are_named_and_refused(change: dict, culprit: str) -> None:
    unsafe = config_changes(changed(), changed(**change))[1]
    assert len(unsafe) == 1 and unsafe[0].startswith(culprit), unsafe
    assert config_hash(changed(), 1) != config_hash(changed(**change), 1)


def test_seed_change_is_refused() -> None:
    current = changed()
    current["seed"] = 7
    assert config_changes(changed(), current)[1] == ["seed: 1337 -> 7"]


def test_the_same_global_batch_on_another_world_size_is_the_same_run() -> None:
    two_ranks = changed(strategy__name="ddp")  # global_batch_size null: 12 x 2 ranks
    one_rank = changed(strategy__name="single", trainer__global_batch_size=24)
    safe, unsafe = config_changes(two_ranks, one_rank, saved_world=2, world=1)
    assert unsafe == [] and safe == [
        "strategy.name: 'ddp' -> 'single'",
        "trainer.global_batch_size: None -> 24",
    ]
    assert config_hash(two_ranks, 2) == config_hash(one_rank, 1)
    assert config_changes(two_ranks, changed(), saved_world=2, world=1)[1] == [
        "trainer.global_batch_size: 24 -> 12"
    ]


def world_cfg(source: str = "text_file", strategy: str = "ddp", global_batch: int | None = None) -> Config:
    return Config(
        data=DataConfig(source=source),
        strategy=StrategyConfig(name=strategy, zero_stage=2 if strategy == "deepspeed" else None),
        trainer=TrainerConfig(micro_batch_size=4, global_batch_size=global_batch),
    )


def layout(world: int, **mesh: int) -> tuple[int, MeshShape]:
    return world, MeshShape(**{"dp_shard": world, **mesh})


def test_world_size_change_resumes_random_windows_with_the_same_global_batch(tmp_path: Path) -> None:
    state = {"global_batch_size": 8}
    check_layout(tmp_path / "step_20", layout(2), layout(1), world_cfg(global_batch=8), state)
    check_layout(tmp_path / "step_20", layout(1), layout(2), world_cfg(), state)


def test_a_mesh_change_on_the_same_ranks_resumes_random_windows_but_not_a_stream(tmp_path: Path) -> None:
    pipelined, tensor_parallel = layout(2, pp=2, dp_shard=1), layout(2, tp=2, dp_shard=1)
    state = {"global_batch_size": 8}
    check_layout(tmp_path / "step_20", pipelined, tensor_parallel, world_cfg("text_file", "fsdp", 8), state)
    with pytest.raises(LaunchError) as raised:
        check_layout(tmp_path / "step_20", pipelined, layout(2), world_cfg("local", "fsdp", 8), state)
    assert str(raised.value).startswith(
        "checkpoint step_20 was written on the mesh pp=2; this run's is dp_shard=2 (data.source=local "
        "keeps a stream position per rank): resume with the strategy.dp_replicate/dp_shard/tp/pp it was "
    )


@pytest.mark.parametrize(
    ("cfg", "reason"),
    [
        (world_cfg(global_batch=None), r"its global batch was 8 sequences per step, this run's is 4"),
        (world_cfg(source="local", global_batch=8), r"data\.source=local keeps a stream position per rank"),
        (world_cfg(strategy="deepspeed", global_batch=8), r"strategy=deepspeed keeps its optimizer state"),
    ],
)
def test_world_size_change_that_cannot_continue_exactly_is_one_clear_line(
    tmp_path: Path, cfg: Config, reason: str
) -> None:
    with pytest.raises(LaunchError) as raised:
        check_layout(tmp_path / "step_20", layout(2), layout(1), cfg, {"global_batch_size": 8})
    message = str(raised.value)
    assert message.startswith("checkpoint step_20 was written by 2 ranks; this run has 1 (")
    assert (
        f"resume with NPROC=2, or start a new run from its weights with trainer.init_from={tmp_path}"
        in message
    )
    assert "\n" not in message
    assert re.search(reason, message)


def test_set_aside_renames_and_never_deletes(tmp_path: Path) -> None:
    (tmp_path / "checkpoints" / "step_10").mkdir(parents=True)
    (tmp_path / "checkpoints" / "step_10" / "model.pt").write_bytes(b"weights")
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    (tmp_path / "config.yaml").write_text("seed: 1\n")
    (tmp_path / "notes.txt").write_text("the user's, not the run's")
    before = tree_digest(tmp_path)
    first = set_aside(tmp_path, "metrics.jsonl")
    (tmp_path / "metrics.jsonl").write_text('{"step": 2}\n')
    second = set_aside(tmp_path, "metrics.jsonl")  # within the same second: another name, nothing lost
    assert len(first) == 3 and len(second) == 1 and second[0] not in first
    assert (tmp_path / "notes.txt").is_file()
    after = tree_digest(tmp_path)
    assert sorted(after.values()) == sorted([*before.values(), hashlib.sha256(b'{"step": 2}\n').hexdigest()])


def losses(run_dir: Path) -> dict[int, float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if "loss" in r}


def test_a_safe_change_is_reported_and_the_run_resumes(tiny_config, capsys) -> None:
    cfg = tiny_config(*QUICK, "trainer.max_steps=4", "scheduler.decay_steps=8")
    run_dir = Path(cfg.out_dir)
    train(cfg, run_dir)
    capsys.readouterr()
    train(
        tiny_config(*QUICK, "trainer.max_steps=8", "scheduler.decay_steps=8", "trainer.keep_last=5"), run_dir
    )
    out = capsys.readouterr().out
    notes = [line for line in out.splitlines() if "config changed" in line]
    assert notes == [
        "gptforge: config changed since step_4 (safe to change): trainer.keep_last: 3 -> 5; "
        "trainer.max_steps: 4 -> 8"
    ]
    assert "resumed from" in out and sorted(losses(run_dir)) == list(range(1, 9))


def test_an_unsafe_change_stops_at_start_and_changes_nothing(tiny_config) -> None:
    cfg = tiny_config(*QUICK, "trainer.max_steps=4")
    run_dir = Path(cfg.out_dir)
    train(cfg, run_dir)
    before = tree_digest(run_dir)
    with pytest.raises(ConfigError) as raised:
        train(tiny_config(*QUICK, "trainer.max_steps=4", "optim.lr=1e-4", "seed=3"), run_dir)
    assert str(raised.value).startswith(
        f"out_dir {run_dir} holds a run with another config (optim.lr: 0.003 -> 0.0001; seed: 1337 -> 3): "
        "resume with the original config, use a new out_dir, or start over there with "
        "trainer.resume=never trainer.overwrite=true"
    )
    assert tree_digest(run_dir) == before


def test_a_run_stopped_before_its_first_checkpoint_is_protected_too(tiny_config) -> None:
    cfg = tiny_config(*QUICK, "trainer.max_steps=4")
    run_dir = Path(cfg.out_dir)
    train(cfg, run_dir)
    for path in sorted((run_dir / "checkpoints").rglob("*"), reverse=True):  # as if killed before step 4
        path.rmdir() if path.is_dir() else path.unlink()
    before = tree_digest(run_dir)
    with pytest.raises(ConfigError, match=r"model\.n_embd: 32 -> 64"):
        train(tiny_config(*QUICK, "trainer.max_steps=4", "model.n_embd=64"), run_dir)
    assert tree_digest(run_dir) == before


def test_overwrite_moves_the_earlier_run_aside_and_starts_over(tiny_config) -> None:
    cfg = tiny_config(*QUICK, "trainer.max_steps=4")
    run_dir = Path(cfg.out_dir)
    train(cfg, run_dir)
    before = tree_digest(run_dir)
    train(
        tiny_config(
            *QUICK, "trainer.max_steps=2", "optim.lr=1e-4", "trainer.resume=never", "trainer.overwrite=true"
        ),
        run_dir,
    )
    assert sorted(losses(run_dir)) == [1, 2]  # a new run from step 0, in a fresh metrics file
    assert [p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith("step_")] == ["step_2"]
    old = {p.name.split(".replaced-")[0]: p for p in run_dir.iterdir() if ".replaced-" in p.name}
    assert sorted(old) == ["checkpoints", "config", "metrics", "tokenizer_meta"]
    kept = {}
    for name, path in old.items():
        files = tree_digest(path) if path.is_dir() else {"": hashlib.sha256(path.read_bytes()).hexdigest()}
        kept |= {f"{name}/{rel}": digest for rel, digest in files.items()}
    assert sorted(kept.values()) == sorted(before.values())  # every earlier file, byte for byte
