"""The engine: concurrent requests batched together each get the answer they would get alone."""

from __future__ import annotations

import threading

import pytest
import torch

from gptforge.config import ModelConfig
from gptforge.data.tokenizers import CharTokenizer
from gptforge.models import GPT, generate
from gptforge.serve import batch as batch_module
from gptforge.serve.engine import Delta, Engine, Failed, Finished, Sampling
from gptforge.serve.text import completion_text

CHARS = CharTokenizer(list("abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRST.,"))  # 49 + EOS: vocab 50
MODEL_CFG = dict(n_layer=2, n_head=4, n_embd=32, block_size=32, vocab_size=50, init_std=0.5)


assert CHARS.vocab_size == MODEL_CFG["vocab_size"]


def tiny(flavour: str = "gpt2") -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(flavour=flavour, **MODEL_CFG)).eval()


class Collected:
    """What the engine told one request."""

    def __init__(self) -> None:
        self.pieces: list[str] = []
        self.end: Finished | Failed | None = None
        self.ended = threading.Event()

    def __call__(self, event) -> None:
        if isinstance(event, Delta):
            self.pieces.append(event.text)
        else:
            self.end = event
            self.ended.set()

    @property
    def text(self) -> str:
        assert self.ended.wait(timeout=30)
        return "".join(self.pieces)


def alone(model: GPT, prompt: str, sampling: Sampling) -> str:
    """What scripts/generate.py samples for this prompt: one sequence, its own seeded generator."""
    generator = torch.Generator().manual_seed(sampling.seed or 0)
    ids = torch.tensor([CHARS.encode(prompt)])
    s = sampling
    out = generate(model, ids, s.max_tokens, s.temperature, s.top_k, s.top_p, CHARS.eos_id, generator)
    return completion_text(CHARS, out[0, len(prompt) :].tolist())


REQUESTS = [
    ("a", Sampling(max_tokens=20, temperature=0)),
    ("the cat sat on", Sampling(max_tokens=12, temperature=0)),
    ("Hello there, friend", Sampling(max_tokens=8, temperature=0)),
    ("xy", Sampling(max_tokens=25, temperature=0)),
    ("the cat sat on", Sampling(max_tokens=12, temperature=1.0, seed=1)),
    ("the cat sat on", Sampling(max_tokens=12, temperature=1.0, seed=2)),
    ("A long prompt of words", Sampling(max_tokens=9, temperature=0.8, top_k=5, seed=3)),
    ("q", Sampling(max_tokens=30, temperature=1.2, top_p=0.9, seed=4)),
]


@pytest.mark.parametrize("flavour", ["gpt2", "llama"])
def test_eight_requests_batched_together_each_get_their_own_answer(
    flavour: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tiny(flavour)
    joined: list[int] = []
    add = batch_module.DecodeBatch.add
    monkeypatch.setattr(
        batch_module.DecodeBatch, "add", lambda self, p: joined.append(len(p)) or add(self, p)
    )
    engine = Engine(model, CHARS, max_batch_size=8)
    collected = [Collected() for _ in REQUESTS]
    for (prompt, sampling), sink in zip(REQUESTS, collected, strict=True):
        engine.submit(CHARS.encode(prompt), sampling, sink)
    engine.start()  # every request is waiting: the first step takes all eight
    try:
        texts = [sink.text for sink in collected]
    finally:
        engine.close()
    assert joined == [8]
    assert texts == [alone(model, prompt, sampling) for prompt, sampling in REQUESTS]
    assert texts[4] != texts[5]  # the same prompt under two seeds
    for (prompt, sampling), sink in zip(REQUESTS, collected, strict=True):
        assert isinstance(sink.end, Finished) and sink.end.prompt_tokens == len(prompt)
        assert sink.end.reason == ("length" if sink.end.completion_tokens == sampling.max_tokens else "stop")


def test_stop_sequences_lengths_cancels_and_failures() -> None:
    model = tiny()
    engine = Engine(model, CHARS, max_batch_size=2).start()  # two rows: the others wait their turn
    try:
        greedy = Sampling(max_tokens=20, temperature=0)
        full = Collected()
        engine.submit(CHARS.encode("a"), greedy, full)
        text = full.text
        cut = text[3:5]
        stopped, cancelled, short = Collected(), Collected(), Collected()
        engine.submit(CHARS.encode("a"), Sampling(max_tokens=20, temperature=0, stop=("zzz", cut)), stopped)
        engine.submit(CHARS.encode("a"), greedy, cancelled).cancel()
        engine.submit(CHARS.encode("a"), Sampling(max_tokens=2, temperature=0), short)
        assert stopped.text == text[: text.index(cut)] and stopped.end.reason == "stop"
        assert short.text == text[:2] and short.end == Finished("length", 1, 2)
        assert not cancelled.ended.wait(timeout=0.5) and not cancelled.pieces
        broken, after = Collected(), Collected()
        engine.submit([99], greedy, broken)  # no such token: the model raises
        assert broken.text == "" and "IndexError" in broken.end.message
        engine.submit(CHARS.encode("a"), greedy, after)
        assert after.text == text  # and the engine serves on
    finally:
        engine.close()
    with pytest.raises(ValueError, match=r"30 prompt \+ 3 new tokens do not fit model.block_size=32"):
        engine.submit([0] * 30, Sampling(max_tokens=3), Collected())
