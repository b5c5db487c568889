"""gptforge.eval.scoring: KV-cache scoring equals full forwards, greedy answers equal `generate`, and a
sharded host's ranks make the same forward calls whatever their examples."""

from __future__ import annotations

import pytest
import torch

from gptforge.config import ModelConfig
from gptforge.eval.host import LocalHost
from gptforge.eval.scoring import continuation_logprobs, greedy_answer
from gptforge.models import GPT, generate

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

BLOCK_SIZE = 16
CPU = torch.device("cpu")


def tiny_gpt(flavour: str) -> GPT:
    torch.manual_seed(0)
    n_kv_head = 1 if flavour == "llama" else None  # grouped-query attention on the llama side
    cfg = ModelConfig(flavour=flavour, vocab_size=23, block_size=BLOCK_SIZE, n_layer=2, n_head=2, n_embd=16)
    cfg.n_kv_head = n_kv_head
    return GPT(cfg).eval()


def reference(model: GPT, context: list[int], continuation: list[int]) -> tuple[float, bool]:
    """lm-eval's causal scoring: one full forward over (context + continuation)[-(T + 1):][:-1]."""
    tokens = (context + continuation)[-(BLOCK_SIZE + 1) :]
    with torch.no_grad():
        logits, _ = model(torch.tensor([tokens[:-1]]))
    logprobs = logits[0, -len(continuation) :].log_softmax(-1)
    target = torch.tensor(continuation)
    picked = logprobs.gather(-1, target.unsqueeze(-1)).sum().item()
    return picked, bool((logprobs.argmax(-1) == target).all())


@pytest.mark.parametrize("flavour", ["gpt2", "llama"])
def test_cached_candidates_score_as_full_forwards(flavour: str) -> None:
    model = tiny_gpt(flavour)
    host = LocalHost(model, CPU)
    generator = torch.Generator().manual_seed(1)
    context = torch.randint(0, 23, (9,), generator=generator).tolist()
    continuations = [torch.randint(0, 23, (n,), generator=generator).tolist() for n in (1, 4, 2, 7)]
    greedy_one = [int(model(torch.tensor([context]))[0][0, -1].argmax())]
    logprobs, greedy = continuation_logprobs(host, context, [*continuations, greedy_one])
    for got, is_greedy, continuation in zip(logprobs, greedy, [*continuations, greedy_one], strict=True):
        expected, expected_greedy = reference(model, context, continuation)
        assert got == pytest.approx(expected, abs=1e-5)
        assert is_greedy == expected_greedy
    assert greedy[-1]


def test_a_long_context_keeps_its_newest_tokens_for_the_longest_candidate() -> None:
    model = tiny_gpt("gpt2")
    context = list(range(20))  # longer than the window
    continuations = [[3, 4, 5, 6, 7], [8, 9, 10, 11, 12], [1, 2]]
    logprobs, _ = continuation_logprobs(LocalHost(model, CPU), context, continuations)
    for got, continuation in zip(logprobs, continuations, strict=True):
        # every candidate continues the last block_size + 1 - 5 context tokens: lm-eval's cut for the longest
        assert got == pytest.approx(reference(model, context[-12:], continuation)[0], abs=1e-5)
    assert logprobs[0] == pytest.approx(reference(model, context, continuations[0])[0], abs=1e-5)


def test_greedy_answer_is_greedy_generation_cut_at_a_stop_string_or_eos() -> None:
    model = tiny_gpt("gpt2")
    prompt = [1, 2, 3]
    tokens = generate(model, torch.tensor([prompt]), 10, temperature=0.0)[0, 3:].tolist()
    change = next(i for i, token in enumerate(tokens) if token != tokens[0])  # 6 here: [6] * 6 + [8] * 4

    def decode(ids: list[int]) -> str:
        return "".join(chr(ord("a") + i) for i in ids)

    host = LocalHost(model, CPU)
    assert greedy_answer(host, prompt, 10, eos_id=99, stop=[], decode=decode) == decode(tokens)
    stop = decode(tokens[change : change + 2])
    assert greedy_answer(host, prompt, 10, eos_id=99, stop=[stop], decode=decode) == decode(tokens[:change])
    eos = tokens[change]
    assert greedy_answer(host, prompt, 10, eos_id=eos, stop=[], decode=decode) == decode(tokens[:change])


class CountingHost(LocalHost):
    """A host whose model counts forward calls; `others_generating` stands for the other ranks' state."""

    def __init__(self, model: GPT, others_generating: int = 0) -> None:
        super().__init__(model, CPU, shards_parameters=True)
        self.forwards = 0
        self.others_generating = others_generating
        model.register_forward_pre_hook(lambda *_: setattr(self, "forwards", self.forwards + 1))

    def broadcast_flag(self, flag: bool) -> bool:
        self.others_generating -= 1
        return flag or self.others_generating >= 0


def test_sharded_hosts_make_the_same_forward_calls_for_any_example() -> None:
    host = CountingHost(tiny_gpt("gpt2"))
    continuation_logprobs(host, [1, 2, 3], [[4], [5]])  # one-token candidates need no second forward...
    assert host.forwards == 2  # ...but every rank makes one, so sharded weights are gathered in step
    host = CountingHost(tiny_gpt("gpt2"), others_generating=5)
    greedy_answer(
        host,
        [1, 2],
        8,
        eos_id=int(host.model(torch.tensor([[1, 2]]))[0][0, -1].argmax()),
        stop=[],
        decode=str,
    )
    assert host.forwards == 1 + 6  # this rank hit EOS at once, and runs on while another rank generates
