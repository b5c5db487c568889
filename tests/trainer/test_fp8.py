"""trainer.precision=fp8: refused in one line where it cannot run; the right linears are converted."""

from __future__ import annotations

import pytest
import torch

from gptforge.config import ModelConfig
from gptforge.errors import ConfigError
from gptforge.models import GPT
from gptforge.trainer.fp8 import check_fp8, convert_to_fp8, converts


def test_fp8_on_a_cpu_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError, match=r"trainer.precision=fp8 needs a CUDA GPU .* not cpu") as err:
        check_fp8(torch.device("cpu"))
    assert "\n" not in str(err.value)


def test_fp8_run_is_refused_before_it_starts(tiny_config) -> None:
    from gptforge.trainer.plan import plan_run

    cfg = tiny_config("trainer.precision=fp8")
    with pytest.raises(ConfigError, match=r"trainer\.precision=fp8"):
        plan_run(cfg, cfg.out_dir)


def llama_1b_on_meta() -> GPT:
    cfg = ModelConfig(flavour="llama", n_layer=2, n_head=32, n_kv_head=8, n_embd=2048, vocab_size=32768)
    with torch.device("meta"):
        return GPT(cfg)


def test_the_big_linears_are_chosen_and_the_head_is_not() -> None:
    model = llama_1b_on_meta()
    chosen = {name for name, module in model.named_modules() if converts(module, name)}
    linears = {name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    assert chosen and all(".attn." in name or ".mlp." in name for name in chosen)
    assert linears - chosen == {name for name in linears if name.endswith("lm_head")}
    assert not converts(torch.nn.Linear(512, 4096), "blocks.0.mlp.up")  # too small to gain


def test_conversion_swaps_exactly_the_chosen_linears() -> None:
    pytest.importorskip("torchao.float8", reason="torchao is in the fp8 and dev extras")
    model = llama_1b_on_meta()
    expected = sum(converts(module, name) for name, module in model.named_modules())
    assert convert_to_fp8(model) == expected > 0
