"""Downstream task evaluation, shared by the training loop and `scripts/evaluate.py`.

Each rank scores every `world_size`-th example of a task (rank r: examples r, r + W, ...), padded with
repeats of the first example that count for nothing, so every rank makes the same forward calls; the
per-metric sums are then added across ranks. One process (W = 1) scores every example itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from gptforge.config import DataConfig, EvalConfig
from gptforge.data import Tokenizer
from gptforge.errors import ConfigError
from gptforge.eval.metrics import (
    ANSWER_METRICS,
    BLEU_STATS,
    CHOICE_METRICS,
    answer_scores,
    check_answer_metric_packages,
    choice_hits,
    corpus_bleu,
)
from gptforge.eval.prompts import (
    AnswerRequest,
    ChoiceRequest,
    answer_length,
    answer_requests,
    choice_requests,
)
from gptforge.eval.scoring import continuation_logprobs, greedy_answer
from gptforge.eval.tasks import Task, load_task, task_config

if TYPE_CHECKING:  # host.py imports gptforge.trainer, which imports this module
    from gptforge.eval.host import EvalHost

TASK_PREFIX = "eval/"  # metric records hold task scores as eval/<task>/<metric>
Scores = dict[str, dict[str, float]]  # task -> metric -> value, and "examples": how many were scored (int)


@dataclass
class PreparedTask:
    """A task encoded for one tokenizer and context window, ready to score."""

    task: Task
    num_fewshot: int
    requests: list[ChoiceRequest] | list[AnswerRequest]
    max_new_tokens: int = 0  # generative only

    @property
    def name(self) -> str:
        return self.task.name


class TaskEvaluator:
    """Scores the run's tasks on every rank's share of their examples, every `eval.every` steps."""

    def __init__(self, tasks: list[PreparedTask], tokenizer: Tokenizer, every: int = 0) -> None:
        self.tasks = tasks
        self.tokenizer = tokenizer
        self.every = every

    def due(self, step: int) -> bool:
        """Whether `step` is an `eval.every` step."""
        return bool(self.every) and step % self.every == 0

    def due_at_end(self, step: int) -> bool:
        """Whether training ending at `step` still owes an evaluation (every=0, or `step` was not one)."""
        return not self.due(step)

    def evaluate(self, host: EvalHost) -> Scores:
        """Every task's scores, the same on every rank (all ranks call); the model is left as it was."""
        training = host.model.training
        host.model.eval()
        try:
            return {task.name: self._score(task, host) for task in self.tasks}
        finally:
            host.model.train(training)

    def _score(self, task: PreparedTask, host: EvalHost) -> dict[str, float]:
        share = task.requests[host.rank :: host.world_size]
        choices = task.task.kind == "multiple_choice"
        sums = [0.0] * (1 + (len(CHOICE_METRICS) if choices else len(ANSWER_METRICS) + BLEU_STATS))
        for position in range(math.ceil(len(task.requests) / host.world_size)):
            real = position < len(share)  # else padding: the same forwards as the other ranks, not counted
            scores = self._score_one(task, share[position] if real else task.requests[0], host)
            if real:
                sums = [total + value for total, value in zip(sums, [1.0, *scores], strict=True)]
        totals = host.all_reduce_sum(torch.tensor(sums, dtype=torch.float64, device=host.device)).tolist()
        count, *values = totals
        names = CHOICE_METRICS if choices else ANSWER_METRICS
        result = {name: value / count for name, value in zip(names, values[: len(names)], strict=True)}
        if not choices:
            result["bleu"] = corpus_bleu(values[len(names) :])  # from the summed statistics
        return {**result, "examples": int(count)}

    def _score_one(
        self, task: PreparedTask, request: ChoiceRequest | AnswerRequest, host: EvalHost
    ) -> list[float]:
        if isinstance(request, ChoiceRequest):
            logprobs, _ = continuation_logprobs(host, request.context_ids, request.continuation_ids)
            return list(choice_hits(logprobs, request.choice_chars, request.gold))
        tokenizer = self.tokenizer
        stop = task.task.config.stop_strings
        answer = greedy_answer(
            host, request.prompt_ids, task.max_new_tokens, tokenizer.eos_id, stop, tokenizer.decode
        )
        return answer_scores(answer, request.references)


def build_task_evaluator(
    cfg: EvalConfig, tokenizer: Tokenizer, block_size: int, data: DataConfig | None = None
) -> TaskEvaluator | None:
    """The evaluator of `eval.tasks` (None when there are none): every task loaded and encoded now, so a bad
    task file fails before training starts."""
    if not cfg.tasks:
        return None
    tasks = [prepare_task(entry, cfg, tokenizer, block_size, data) for entry in cfg.tasks]
    names = [task.name for task in tasks]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(f"eval.tasks names task {repeated[0]!r} twice; give each task its own name")
    return TaskEvaluator(tasks, tokenizer, cfg.every)


def prepare_task(
    entry: str, cfg: EvalConfig, tokenizer: Tokenizer, block_size: int, data: DataConfig | None = None
) -> PreparedTask:
    """One `eval.tasks` entry loaded (its first `eval.limit` examples) and encoded."""
    task_cfg, keep = task_config(entry, data)
    task = load_task(task_cfg, cfg.limit, keep)
    k = task_cfg.num_fewshot if cfg.num_fewshot is None else cfg.num_fewshot
    if task.kind == "multiple_choice":
        return PreparedTask(task, k, choice_requests(task, tokenizer, block_size, k, cfg.fewshot_seed))
    check_answer_metric_packages(task.name)
    tokens = answer_length(task, cfg.max_new_tokens, block_size)
    return PreparedTask(task, k, answer_requests(task, tokenizer, k, cfg.fewshot_seed), tokens)


def metric_record(scores: Scores) -> dict[str, float]:
    """Task scores as flat metric-record keys: eval/<task>/<metric> (and eval/<task>/examples)."""
    return {
        f"{TASK_PREFIX}{task}/{metric}": value
        for task, metrics in scores.items()
        for metric, value in metrics.items()
    }


def format_table(scores: Scores, tasks: list[PreparedTask]) -> str:
    """A plain-text table: one row per task and metric."""
    shots = {task.name: task.num_fewshot for task in tasks}
    rows = [("task", "metric", "value", "n-shot", "examples")]
    for name, metrics in scores.items():
        for metric, value in metrics.items():
            if metric != "examples":
                rows.append((name, metric, f"{value:.4f}", str(shots[name]), str(int(metrics["examples"]))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])
