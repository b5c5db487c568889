"""The plan a run makes before it starts: strategy for the world size, a token budget, the architecture of
`trainer.init_from`, what a longer resume does to the schedule, a BPE trained on the corpus."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import ROOT, TINY, compose_config

from gptforge.config import SchedulerConfig
from gptforge.data.tokenizers import tokenizer_fingerprint
from gptforge.errors import ConfigError, LaunchError
from gptforge.trainer import train
from gptforge.trainer.build import build_trainer
from gptforge.trainer.plan import World, plan_run
from gptforge.trainer.resume import check_schedule

QUICK = ["trainer.eval_every=0", "trainer.log_every=1", "scheduler.warmup_steps=1"]


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run trained to its end (6 steps, cosine) with a checkpoint at step 6."""
    run_dir = tmp_path_factory.mktemp("plan") / "run"
    train(compose_config([*TINY, *QUICK, f"out_dir={run_dir}", "trainer.max_steps=6"]), run_dir)
    return run_dir


@pytest.mark.parametrize(("world_size", "strategy"), [(1, "single"), (2, "ddp"), (16, "ddp")])
def test_the_default_strategy_follows_the_world_size(world_size: int, strategy: str, tmp_path: Path) -> None:
    cfg = compose_config([*TINY, f"out_dir={tmp_path}"])
    assert cfg.strategy.name == "auto"
    plan = plan_run(cfg, tmp_path, World(world_size=world_size, local_world_size=min(world_size, 8)))
    assert plan.cfg.strategy.name == strategy


def test_single_on_several_processes_is_refused_in_one_line(tmp_path: Path) -> None:
    cfg = compose_config([*TINY, f"out_dir={tmp_path}", "strategy=single"])
    with pytest.raises(LaunchError, match=r"strategy=single runs one process, but this job has 8") as err:
        plan_run(cfg, tmp_path, World(world_size=8, local_world_size=8))
    assert "\n" not in str(err.value) and "strategy=auto" in str(err.value)


def test_a_token_budget_sets_the_steps_and_the_summary_says_so(tmp_path: Path) -> None:
    # 4 sequences x 32 tokens = 128 tokens per step on one rank, 512 on 2 ranks with 2 accumulation steps
    cfg = compose_config([*TINY, *QUICK, f"out_dir={tmp_path}", "trainer.max_tokens=1000"])
    assert plan_run(cfg, tmp_path).cfg.trainer.max_steps == 8  # ceil(1000 / 128)
    wide = compose_config(
        [*TINY, f"out_dir={tmp_path}", "trainer.max_tokens=5e4", "trainer.global_batch_size=16"]
    )
    assert plan_run(wide, tmp_path, World(world_size=2, local_world_size=2)).cfg.trainer.max_steps == 98
    trainer = build_trainer(cfg, tmp_path)
    try:
        rows = dict(trainer.summary().rows())
        assert rows["length"].startswith("8 steps x 128 = 1.02K tokens (trainer.max_tokens=1000)")
        assert rows["corpus"].startswith("1.00M training tokens: the run reads 0.00 epochs")
        assert trainer.fit()["step"] == 8
    finally:
        trainer.close()


def test_a_token_budget_shorter_than_the_warm_up_is_refused(tmp_path: Path) -> None:
    cfg = compose_config(
        [*TINY, f"out_dir={tmp_path}", "trainer.max_tokens=500", "scheduler.warmup_steps=10"]
    )
    with pytest.raises(ConfigError, match=r"warmup_steps=10 is not shorter than the run's 4 steps"):
        plan_run(cfg, tmp_path)


def test_init_from_takes_the_architecture_and_tokenizer_and_the_summary_names_them(
    finished_run: Path, tmp_path: Path
) -> None:
    # another model and tokenizer on the command line: the checkpoint's win, with a fresh schedule
    cfg = compose_config(
        [
            *TINY,
            *QUICK,
            f"out_dir={tmp_path}",
            f"trainer.init_from={finished_run}",
            "model.n_layer=5",
            "tokenizer=byte",
            "model.dropout=0.1",
            "trainer.max_steps=2",
        ]
    )
    plan = plan_run(cfg, tmp_path)
    assert (plan.cfg.model.n_layer, plan.cfg.tokenizer.name, plan.cfg.model.dropout) == (2, "char", 0.1)
    assert (
        plan.init.describe() == f"{finished_run / 'checkpoints' / 'step_6'} (model.* and tokenizer from it)"
    )
    train(cfg, tmp_path)
    saved = (tmp_path / "config.yaml").read_text()
    assert "n_layer: 2" in saved and "name: char" in saved
    # the resume keeps the adopted architecture even though the command line still says n_layer=5
    assert plan_run(cfg, tmp_path).resume_from == tmp_path / "checkpoints" / "step_2"


def test_a_longer_run_that_would_jump_the_learning_rate_is_refused_before_it_starts(
    finished_run: Path,
) -> None:
    before = (finished_run / "metrics.jsonl").read_text()
    longer = compose_config([*TINY, *QUICK, f"out_dir={finished_run}", "trainer.max_steps=12"])
    with pytest.raises(ConfigError, match=r"at step 6 the learning rate would jump from 0.0003 to ") as err:
        plan_run(longer, finished_run)
    message = str(err.value)
    assert "scheduler.decay_steps=6" in message and "scheduler=wsd" in message and "\n" not in message
    assert (finished_run / "metrics.jsonl").read_text() == before
    # keeping the decay where it was continues smoothly at the floor
    kept = compose_config(
        [*TINY, *QUICK, f"out_dir={finished_run}", "trainer.max_steps=12", "scheduler.decay_steps=6"]
    )
    assert plan_run(kept, finished_run).resume_from == finished_run / "checkpoints" / "step_6"


def test_wsd_extends_in_its_flat_part_and_refuses_in_its_cool_down() -> None:
    def saved(max_steps: int) -> dict:
        scheduler = {"name": "wsd", "warmup_steps": 10, "min_lr_ratio": 0.1, "decay_steps": None}
        return {"trainer": {"max_steps": max_steps}, "scheduler": scheduler | {"wsd_decay_fraction": 0.2}}

    cfg = compose_config(["scheduler=wsd", "scheduler.warmup_steps=10", "trainer.max_steps=2000"])
    assert cfg.scheduler == SchedulerConfig(name="wsd", warmup_steps=10, min_lr_ratio=0.1)
    # at step 500 of 1000 the rate is flat in both plans: the cool-down moves to 1600-2000
    assert check_schedule(saved(1000), cfg, 500) == ["wsd: the cool-down now runs from step 1600 to 2000"]
    with pytest.raises(ConfigError, match=r"at step 900 the learning rate would jump"):
        check_schedule(saved(1000), cfg, 900)  # already cooling down
    assert check_schedule(saved(2000), cfg, 900) == []  # same length: nothing to say


def test_bpe_without_a_path_is_trained_on_the_corpus_and_kept_for_the_resume(tmp_path: Path, capsys) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text((ROOT / "data" / "tinyshakespeare.txt").read_text()[:40_000])
    common = [*TINY, *QUICK, "data=local", f"data.path={corpus}", "data.num_workers=0", "tokenizer=bpe"]
    common += ["tokenizer.vocab_size=300", f"out_dir={tmp_path / 'run'}", "trainer.checkpoint_every=2"]
    train(compose_config([*common, "trainer.max_steps=2"]), tmp_path / "run")
    first = capsys.readouterr().out
    assert "gptforge: training a bpe tokenizer (tokenizer.vocab_size=300) on local: " in first
    assert "gptforge: tokenizer trained on " in first and "vocabulary 300" in first
    run_dir = tmp_path / "run"
    assert (run_dir / "tokenizer.json").is_file() and (
        run_dir / "checkpoints" / "step_2" / "tokenizer.json"
    ).is_file()

    trainer = build_trainer(
        compose_config([*common, "trainer.max_steps=4", "scheduler.decay_steps=2"]), run_dir
    )  # resumes: the saved tokenizer, not a new one
    trainer.close()
    assert "training a BPE" not in capsys.readouterr().out
    assert trainer.cfg.model.vocab_size == 300
    from gptforge.data import load_tokenizer

    assert tokenizer_fingerprint(trainer.tokenizer) == tokenizer_fingerprint(load_tokenizer(run_dir))
