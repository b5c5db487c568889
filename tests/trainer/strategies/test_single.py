"""SingleDeviceStrategy: CPU batch slicing (`trainer.cpu_batch_threads`) trains the same model."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
from conftest import TINY, compose_config

from gptforge.errors import ConfigError
from gptforge.models import GPT
from gptforge.trainer.strategies.base import StepLayout
from gptforge.trainer.strategies.single import SingleDeviceStrategy

VOCAB_SIZE = 65


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """Slicing sets torch's thread count for the process; give the next test the count it had."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def strategy_for(cpu_batch_threads: int, *overrides: str) -> SingleDeviceStrategy:
    cfg = compose_config([*TINY, f"trainer.cpu_batch_threads={cpu_batch_threads}", *overrides])
    torch.manual_seed(0)
    strategy = SingleDeviceStrategy.from_config(cfg.strategy, cfg.trainer)
    strategy.setup(GPT(replace(cfg.model, vocab_size=VOCAB_SIZE)), cfg.optim, StepLayout(4, 1, 1.0))
    return strategy


def grads_after(strategy: SingleDeviceStrategy, input_ids: torch.Tensor, targets: torch.Tensor):
    loss = strategy.forward_backward(input_ids, targets, loss_scale=0.5, sync_grads=True)
    grads = {name: p.grad.clone() for name, p in strategy.model.named_parameters()}
    return loss, grads


@pytest.mark.parametrize("cpu_batch_threads", [2, 3])
def test_slices_give_the_whole_batch_loss_and_gradients(cpu_batch_threads: int) -> None:
    whole, sliced = strategy_for(1), strategy_for(cpu_batch_threads)
    sliced.model.load_state_dict(copy.deepcopy(whole.model.state_dict()))
    input_ids = torch.randint(0, VOCAB_SIZE, (8, 32), generator=torch.Generator().manual_seed(1))
    targets = torch.roll(input_ids, -1, dims=1)
    targets[0, :20] = -100  # slices hold unequal numbers of counted targets: their shares must weigh that
    try:
        whole_loss, whole_grads = grads_after(whole, input_ids, targets)
        sliced_loss, sliced_grads = grads_after(sliced, input_ids, targets)
        torch.testing.assert_close(sliced_loss, whole_loss)
        for name, grad in whole_grads.items():
            torch.testing.assert_close(sliced_grads[name], grad, msg=name)
        torch.testing.assert_close(sliced.eval_loss(input_ids, targets), whole.eval_loss(input_ids, targets))
    finally:
        sliced.teardown()


def test_slices_repeat_bit_exactly() -> None:
    input_ids = torch.randint(0, VOCAB_SIZE, (8, 32), generator=torch.Generator().manual_seed(2))
    runs = []
    for _ in range(2):
        strategy = strategy_for(2)
        try:
            runs.append(grads_after(strategy, input_ids, torch.roll(input_ids, -1, dims=1)))
        finally:
            strategy.teardown()
    (loss_a, grads_a), (loss_b, grads_b) = runs
    assert torch.equal(loss_a, loss_b)
    assert all(torch.equal(grads_a[name], grads_b[name]) for name in grads_a)


def test_slices_refuse_dropout_and_compile_in_one_line() -> None:
    with pytest.raises(ConfigError, match=r"cpu_batch_threads=2 needs a model without dropout"):
        strategy_for(2, "model.dropout=0.1")
    with pytest.raises(ConfigError, match=r"does not combine with trainer.compile=true"):
        cfg = compose_config([*TINY, "trainer.cpu_batch_threads=2"])
        model = GPT(replace(cfg.model, vocab_size=VOCAB_SIZE))
        layout = StepLayout(4, 1, 1.0, compile=True)
        SingleDeviceStrategy.from_config(cfg.strategy, cfg.trainer).setup(model, cfg.optim, layout)
