"""Task evaluation inside 2-rank runs (gloo on CPU) under ddp, fsdp and ZeRO-3: each rank scores its share
of the examples (odd counts, so one rank pads), the sums are reduced, and rank 0 logs exactly what one
process scores on the run's checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from launch_utils import TINY_RUN, check, records, torchrun

from gptforge.config import EvalConfig
from gptforge.eval.evaluator import build_task_evaluator, metric_record
from gptforge.eval.host import LocalHost
from gptforge.trainer.checkpoint import load_checkpoint

pytestmark = [pytest.mark.multiprocess, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def tasks(next_line_task: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The next-line task and a generative one of 3 examples (whose answers end at different steps)."""
    qa = tmp_path_factory.mktemp("tasks") / "qa.jsonl"
    prompts = ["ROMEO:\n", "JULIET:\nO", "First Citizen:\nWe"]
    qa.write_text("".join(json.dumps({"prompt": p, "references": ["Romeo"]}) + "\n" for p in prompts))
    return [str(next_line_task), str(qa)]


@pytest.mark.parametrize("strategy", ["ddp", "fsdp", "deepspeed_zero3"])
def test_in_loop_scores_of_two_ranks_equal_one_process_on_the_checkpoint(
    strategy: str, tasks: list[str], tmp_path: Path
) -> None:
    # 7 examples: one rank pads with a repeat; few, since every sharded forward is many small collectives
    # that wait whenever another process holds a core; eval.every=0: once, at the end
    settings = [f"eval.tasks=[{','.join(tasks)}]", "eval.limit=7", "eval.max_new_tokens=4"]
    run = [f"strategy={strategy}", "trainer.max_steps=4", "scheduler.warmup_steps=1", f"out_dir={tmp_path}"]
    check(torchrun([*TINY_RUN, *run, "trainer.log_every=4", *settings]))
    (logged,) = [r for r in records(tmp_path) if "eval/next_line/acc" in r]
    assert logged["step"] == 4 and logged["eval/next_line/examples"] == 7 and logged["eval/qa/examples"] == 3
    loaded = load_checkpoint(tmp_path)  # consolidated from the strategy's own checkpoint format
    eval_cfg = EvalConfig(tasks=tasks, limit=7, max_new_tokens=4)
    evaluator = build_task_evaluator(eval_cfg, loaded.tokenizer, 32)
    one_process = metric_record(evaluator.evaluate(LocalHost(loaded.model, torch.device("cpu"))))
    assert {k: v for k, v in logged.items() if k != "step"} == one_process
