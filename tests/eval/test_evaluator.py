"""Task scores as a run and a checkpoint report them: they move with training, the loop logs them to
every logger, and an SFT run's validation responses are scored end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY, compose_config

from gptforge.config import EvalConfig
from gptforge.data.stream import held_out
from gptforge.eval.evaluator import TaskEvaluator, build_task_evaluator
from gptforge.eval.host import LocalHost
from gptforge.models import GPT
from gptforge.trainer import train
from gptforge.trainer.checkpoint import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

CPU = torch.device("cpu")


def checkpoint_evaluator(run_dir: Path, eval_cfg: EvalConfig) -> tuple[TaskEvaluator, LocalHost]:
    """What scripts/evaluate.py --tasks builds: the checkpoint's tasks, to score in one process."""
    loaded = load_checkpoint(run_dir)
    evaluator = build_task_evaluator(eval_cfg, loaded.tokenizer, loaded.cfg.model.block_size, loaded.cfg.data)
    return evaluator, LocalHost(loaded.model, CPU)


def test_next_line_accuracy_moves_from_chance_to_well_above_it_with_training(
    shakespeare_run: Path, next_line_task: Path
) -> None:
    loaded = load_checkpoint(shakespeare_run)
    evaluator = build_task_evaluator(EvalConfig(tasks=[str(next_line_task)]), loaded.tokenizer, 32)
    torch.manual_seed(loaded.cfg.seed)  # the weights the run started from
    fresh = evaluator.evaluate(LocalHost(GPT(loaded.cfg.model).eval(), CPU))["next_line"]
    trained = evaluator.evaluate(LocalHost(loaded.model, CPU))["next_line"]
    assert fresh["examples"] == trained["examples"] == 200
    # chance is 0.25 (4 choices); measured: fresh 0.27, after 200 steps 0.775 (acc and acc_norm alike:
    # the shuffled copies have the true line's length)
    assert 0.15 < fresh["acc"] < 0.38 and 0.15 < fresh["acc_norm"] < 0.38
    assert trained["acc"] > 0.6 and trained["acc_norm"] > 0.6


def test_the_loop_logs_task_scores_to_every_logger_as_the_checkpoint_scores_them(
    tmp_path: Path, next_line_task: Path, capsys: pytest.CaptureFixture
) -> None:
    tasks = f"eval.tasks=[{next_line_task}]"
    loggers = ["logger=[console,jsonl,tensorboard]", "logger.console.progress_bar=false"]
    steps = ["trainer.max_steps=10", "trainer.eval_every=0", tasks, "eval.every=4", "eval.limit=21"]
    steps.append("scheduler.decay_steps=12")  # resumed below with max_steps=12 on the same schedule
    cfg = compose_config([*TINY, f"out_dir={tmp_path}", *steps, *loggers])
    last = train(cfg, tmp_path)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    task_records = [r for r in records if "eval/next_line/acc" in r]
    assert [r["step"] for r in task_records] == [4, 8, 10]  # every 4 steps, and at the end
    assert set(task_records[-1]) == {
        "step",
        *(f"eval/next_line/{m}" for m in ("acc", "acc_norm", "examples")),
    }
    assert last["eval/next_line/acc"] == task_records[-1]["eval/next_line/acc"]
    assert "step 10 | next_line: acc " in capsys.readouterr().out

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("eval/next_line/acc")] == [4, 8, 10]
    evaluator, host = checkpoint_evaluator(tmp_path, EvalConfig(tasks=[str(next_line_task)], limit=21))
    scores = evaluator.evaluate(host)["next_line"]
    assert scores == {
        k.removeprefix("eval/next_line/"): v for k, v in task_records[-1].items() if k != "step"
    }
    # the tasks are no part of what a resumed run must share with its checkpoint
    more = ["trainer.max_steps=12", "eval.limit=5"]
    train(compose_config([*TINY, f"out_dir={tmp_path}", *steps, *loggers, *more]), tmp_path)
    resumed = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["eval/next_line/examples"] for r in resumed if "eval/next_line/examples" in r][-1] == 5


def test_an_sft_runs_validation_responses_are_scored_end_to_end(
    shakespeare_run: Path, tmp_path: Path
) -> None:
    tiny_model = [o for o in TINY if o.startswith(("model.", "trainer.micro", "trainer.eval_b", "logger."))]
    settings = ["eval.tasks=[sft_val]", "eval.limit=6", "eval.max_new_tokens=12"]
    run = [f"trainer.init_from={shakespeare_run}", f"out_dir={tmp_path}", "trainer.max_steps=20"]
    steps = ["scheduler.warmup_steps=2", "trainer.eval_every=0"]
    cfg = compose_config(["experiment=sft", *tiny_model, *run, *steps, *settings])
    last = train(cfg, tmp_path)
    in_loop = {k.removeprefix("eval/sft_val/"): v for k, v in last.items() if k.startswith("eval/sft_val/")}
    assert set(in_loop) == {"exact_match", "f1", "rouge_l", "bleu", "examples"}
    assert in_loop["examples"] == 6  # of the ~30 examples data.val_fraction=0.05 holds out
    assert all(0 <= in_loop[m] <= 1 for m in ("exact_match", "f1", "rouge_l")) and 0 <= in_loop["bleu"] <= 100
    evaluator, host = checkpoint_evaluator(
        tmp_path, EvalConfig(tasks=["sft_val"], limit=6, max_new_tokens=12)
    )
    assert evaluator.evaluate(host)["sft_val"] == in_loop
    # the examples the SFT loader holds out for validation (a fixed hash of file and row), in file order
    rows = [json.loads(line) for line in (ROOT / "data" / "sft_example.jsonl").read_text().splitlines()]
    held = [row for i, row in enumerate(rows) if held_out(0, i, cfg.data.val_fraction)][:6]
    scored = evaluator.tasks[0].task.examples
    assert [(e.prompt, e.references) for e in scored] == [(r["prompt"], [r["response"]]) for r in held]
