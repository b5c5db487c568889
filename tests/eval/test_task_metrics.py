"""gptforge.eval.metrics against hand-checked examples and the libraries' own corpus scores."""

from __future__ import annotations

import pytest

from gptforge.eval.metrics import (
    bleu_statistics,
    choice_hits,
    corpus_bleu,
    exact_match,
    normalize_answer,
    rouge_l,
    token_f1,
)

sacrebleu = pytest.importorskip("sacrebleu")  # the eval extra (rouge-score too): [dev] installs it
pytest.importorskip("rouge_score")


def test_acc_takes_the_largest_loglikelihood_and_acc_norm_the_largest_per_character() -> None:
    # choice 0: -4.0 over 2 characters (-2.0 each); choice 1: -5.0 over 10 characters (-0.5 each)
    assert choice_hits([-4.0, -5.0], [2, 10], gold=0) == (1.0, 0.0)
    assert choice_hits([-4.0, -5.0], [2, 10], gold=1) == (0.0, 1.0)
    assert choice_hits([-3.0, -3.0], [3, 3], gold=0) == (1.0, 1.0)  # a tie goes to the first, as numpy's


def test_answers_are_normalised_as_squad_normalises_them() -> None:
    assert normalize_answer("The  Cat, sat!") == "cat sat"
    assert normalize_answer("An apple a day") == "apple day"
    assert exact_match("The cat.", ["a dog", "a Cat"]) == 1.0
    assert exact_match("cats", ["cat"]) == 0.0


def test_token_f1_is_the_best_bag_of_tokens_overlap() -> None:
    # "cat sat on mat" against "cat on mat": 3 common tokens, precision 3/4, recall 1
    assert token_f1("the cat sat on the mat", ["cat on mat", "dog"]) == pytest.approx(2 * 0.75 / 1.75)
    assert token_f1("dog", ["cat"]) == 0.0
    assert token_f1("", [""]) == 1.0


def test_rouge_l_is_the_f_measure_of_the_longest_common_subsequence() -> None:
    # 6 answer tokens, 5 reference tokens, all 5 in order: precision 5/6, recall 1, F = 10/11
    assert rouge_l("the cat sat on the mat", ["the cat on the mat"]) == pytest.approx(10 / 11)
    assert rouge_l("the cat", ["nothing alike", "the cat"]) == pytest.approx(1.0)


def test_bleu_from_summed_statistics_is_sacrebleus_corpus_bleu() -> None:
    answers = ["the cat sat on the mat", "a quick brown dog jumps", "hello world"]
    references = ["the cat is on the mat", "the quick brown fox jumps", "hello there world"]
    statistics = [bleu_statistics(a, [r]) for a, r in zip(answers, references, strict=True)]
    summed = [sum(column) for column in zip(*statistics, strict=True)]
    assert corpus_bleu(summed) == pytest.approx(sacrebleu.corpus_bleu(answers, [references]).score)
    assert corpus_bleu(
        bleu_statistics("the cat sat on the mat", ["the cat sat on the mat"])
    ) == pytest.approx(100)
