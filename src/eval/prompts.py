"""From examples to token ids, as lm-evaluation-harness builds them: k-shot prefix, context, continuations.

A k-shot example is `context + target_delimiter + answer + fewshot_delimiter`; the scored example follows
as `context`, and each candidate continuation is `target_delimiter + choice`. Trailing whitespace of the
context moves to the continuation, and the continuation's tokens are those of `context + continuation`
after the context's (lm-eval's `TemplateLM._encode_pair`), so BPE merges across the boundary score alike.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from gptforge.data import Tokenizer
from gptforge.errors import ConfigError, DataError
from gptforge.eval.tasks import AnswerExample, ChoiceExample, Example, Row, Task

MAX_NEW_TOKENS = 256  # lm-eval's default max_gen_toks, for models whose block_size allows it


@dataclass(frozen=True)
class ChoiceRequest:
    """A multiple-choice example as token ids: the context every candidate continues, and the candidates."""

    context_ids: list[int]
    continuation_ids: list[list[int]]
    choice_chars: list[int]  # len(choice) in characters: lm-eval's acc_norm denominator
    gold: int


@dataclass(frozen=True)
class AnswerRequest:
    """A generative example as token ids: the prompt, and what a right answer is."""

    prompt_ids: list[int]
    references: list[str]


def encode_pair(tokenizer: Tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Context and continuation ids as lm-eval's causal models encode them; an empty context is EOS."""
    if not context:
        continuation_ids = tokenizer.encode(continuation)
        if continuation_ids and continuation_ids[0] == tokenizer.eos_id:
            return continuation_ids[:1], continuation_ids[1:]
        return [tokenizer.eos_id], continuation_ids
    stripped = context.rstrip()
    continuation = context[len(stripped) :] + continuation
    context_ids = tokenizer.encode(stripped)
    whole = tokenizer.encode(stripped + continuation)
    return context_ids, whole[len(context_ids) :]


def fewshot_prefix(task: Task, index: int, num_fewshot: int, seed: int) -> str:
    """The k solved examples before example `index`: a seeded draw from the task's few-shot pool, or from its
    other examples, the same on every rank and every run."""
    if num_fewshot == 0:
        return ""
    pool = task.fewshot_pool if task.fewshot_pool is not None else task.examples
    candidates = [i for i in range(len(pool)) if task.fewshot_pool is not None or i != index]
    if len(candidates) < num_fewshot:
        raise ConfigError(
            f"task {task.name}: num_fewshot={num_fewshot} but only {len(candidates)} examples to draw them "
            "from; lower num_fewshot or give fewshot_path more examples"
        )
    picked = random.Random(seed * 1_000_003 + index).sample(candidates, num_fewshot)
    cfg = task.config
    return "".join(_solved(pool[i], cfg.target_delimiter) + cfg.fewshot_delimiter for i in picked)


def _solved(example: Example, target_delimiter: str) -> str:
    if isinstance(example, ChoiceExample):
        return example.context + target_delimiter + example.choices[example.gold]
    return example.prompt + target_delimiter + example.references[0]


def choice_requests(
    task: Task, tokenizer: Tokenizer, block_size: int, num_fewshot: int, seed: int
) -> list[ChoiceRequest]:
    """Every example of a multiple-choice task encoded; a continuation longer than the window fails."""
    requests = []
    for index, example in enumerate(task.examples):
        context = fewshot_prefix(task, index, num_fewshot, seed) + example.context
        continuations = []
        for number, choice in enumerate(example.choices):
            context_ids, ids = _encoded(
                example.row, tokenizer, context, task.config.target_delimiter + choice
            )
            if not ids:
                raise DataError(f"{example.row}: choice {number} ({choice!r}) encodes to no tokens")
            if len(ids) > block_size:
                raise DataError(
                    f"{example.row}: choice {number} is {len(ids)} tokens, longer than the model's context "
                    f"window (model.block_size={block_size}); shorten it or use a longer-context model"
                )
            continuations.append(ids)
        lengths = [len(choice) for choice in example.choices]
        requests.append(ChoiceRequest(context_ids, continuations, lengths, example.gold))
    return requests


def answer_requests(task: Task, tokenizer: Tokenizer, num_fewshot: int, seed: int) -> list[AnswerRequest]:
    """Every example of a generative task encoded (its prompt is cut from the left when scored)."""
    requests = []
    for index, example in enumerate(task.examples):
        assert isinstance(example, AnswerExample)
        prompt = fewshot_prefix(task, index, num_fewshot, seed) + example.prompt
        prompt_ids = _encoded(example.row, tokenizer, prompt, "")[0] if prompt else [tokenizer.eos_id]
        requests.append(AnswerRequest(prompt_ids, example.references))
    return requests


def answer_length(task: Task, override: int | None, block_size: int) -> int:
    """Greedy tokens per answer: eval.max_new_tokens, the task's, or half the context window (<= 256)."""
    tokens = override or task.config.max_new_tokens or min(MAX_NEW_TOKENS, block_size // 2)
    if tokens >= block_size:
        raise ConfigError(
            f"task {task.name}: max_new_tokens={tokens} leaves no room for the prompt in "
            f"model.block_size={block_size}; set eval.max_new_tokens below {block_size}"
        )
    return tokens


def _encoded(row: Row, tokenizer: Tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    try:
        if not continuation:
            return tokenizer.encode(context), []
        return encode_pair(tokenizer, context, continuation)
    except DataError as err:  # e.g. a character the char tokenizer never saw
        raise DataError(f"{row}: {err}") from None
