"""Task metrics, per example, as sums that add across examples and ranks.

Multiple choice (lm-evaluation-harness's definitions): `acc` is 1 when the right choice has the highest
summed log-likelihood, `acc_norm` when it has the highest log-likelihood per character of the choice.
Generative: `exact_match` and `f1` as SQuAD defines them (answers lower-cased, punctuation, articles and
extra whitespace removed; bag-of-tokens F1), best over the references; `rouge_l` the ROUGE-L F-measure of
`rouge-score`, best over the references; `bleu` sacrebleu's corpus BLEU (0-100) over all examples.
"""

from __future__ import annotations

import collections
import importlib.util
import logging
import re
import string
from functools import cache

from gptforge.errors import ConfigError

CHOICE_METRICS = ("acc", "acc_norm")
ANSWER_METRICS = ("exact_match", "f1", "rouge_l")
BLEU_ORDER = 4  # sacrebleu's default n-gram order
BLEU_STATS = 2 + 2 * BLEU_ORDER  # hypothesis length, reference length, matches and totals per order


def check_answer_metric_packages(task: str) -> None:
    """ConfigError naming the extra unless rouge-score and sacrebleu (generative metrics) are installed."""
    missing = [
        name
        for name, module in (("rouge-score", "rouge_score"), ("sacrebleu", "sacrebleu"))
        if not importlib.util.find_spec(module)
    ]
    if missing:
        raise ConfigError(
            f"task {task} is generative and its metrics need {' and '.join(missing)}: "
            "pip install -e '.[eval]'"
        )


def choice_hits(logprobs: list[float], choice_chars: list[int], gold: int) -> tuple[float, float]:
    """(acc, acc_norm) of one example: 1.0 where the argmax (first on ties, as numpy's) is the gold."""
    per_char = [lp / chars for lp, chars in zip(logprobs, choice_chars, strict=True)]
    return float(_argmax(logprobs) == gold), float(_argmax(per_char) == gold)


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles (a, an, the), single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


_PUNCTUATION = frozenset(string.punctuation)


def exact_match(answer: str, references: list[str]) -> float:
    return max(float(normalize_answer(answer) == normalize_answer(ref)) for ref in references)


def token_f1(answer: str, references: list[str]) -> float:
    """SQuAD's F1 over normalised tokens, best over the references (1.0 when both sides are empty)."""
    return max(_f1(normalize_answer(answer).split(), normalize_answer(ref).split()) for ref in references)


def _f1(answer: list[str], reference: list[str]) -> float:
    if not answer or not reference:
        return float(answer == reference)
    common = sum((collections.Counter(answer) & collections.Counter(reference)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(answer), common / len(reference)
    return 2 * precision * recall / (precision + recall)


def rouge_l(answer: str, references: list[str]) -> float:
    """ROUGE-L F-measure (rouge-score, no stemming), best over the references."""
    return _rouge_scorer().score_multi(references, answer)["rougeL"].fmeasure


@cache
def _rouge_scorer():
    from rouge_score import rouge_scorer

    absl = logging.getLogger("absl")  # rouge-score says "Using default tokenizer." at INFO: not news
    level, absl.level = absl.level, logging.WARNING
    try:
        return rouge_scorer.RougeScorer(["rougeL"])
    finally:
        absl.setLevel(level)


def answer_scores(answer: str, references: list[str]) -> list[float]:
    """exact_match, f1 and rouge_l of one answer, then its BLEU statistics (which add up to corpus BLEU)."""
    return [
        exact_match(answer, references),
        token_f1(answer, references),
        rouge_l(answer, references),
        *bleu_statistics(answer, references),
    ]


def bleu_statistics(answer: str, references: list[str]) -> list[float]:
    """sacrebleu's sufficient statistics of one answer: lengths, then n-gram matches and totals per order."""
    score = _bleu().sentence_score(answer, references)
    return [float(score.sys_len), float(score.ref_len), *map(float, score.counts), *map(float, score.totals)]


def corpus_bleu(statistics: list[float]) -> float:
    """sacrebleu's corpus BLEU (its defaults: exp smoothing, 13a tokens) from summed statistics."""
    from sacrebleu.metrics import BLEU

    sys_len, ref_len = int(statistics[0]), int(statistics[1])
    correct = [int(x) for x in statistics[2 : 2 + BLEU_ORDER]]
    total = [int(x) for x in statistics[2 + BLEU_ORDER :]]
    return BLEU.compute_bleu(correct, total, sys_len, ref_len, smooth_method="exp").score


@cache
def _bleu():
    from sacrebleu.metrics import BLEU

    # effective_order only changes a sentence's own score, not the statistics kept here
    return BLEU(effective_order=True)
