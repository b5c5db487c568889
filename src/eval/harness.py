"""lm-evaluation-harness adapter: gptforge checkpoints as the lm-eval model `gptforge` (extra `eval`).

    python -m gptforge.eval.harness --model gptforge --model_args checkpoint=runs/my_run --tasks hellaswag

lm-eval's own command line only finds the models it ships (its registry reads no plugin entry points), so
this module registers `gptforge` and then runs lm-eval's command line, with every argument of `lm_eval`.
From Python: `import gptforge.eval.harness`, then `lm_eval.simple_evaluate(model="gptforge", ...)`.

Requests are scored as lm-eval's `hf` model scores them (`TemplateLM` encodes context and continuation
alike; contexts are cut from the left to `block_size + 1 - len(continuation)` tokens; rolling windows are
lm-eval's own), so the exported HF model gives the same log-likelihoods (docs/EVALUATION.md).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import torch
from tqdm import tqdm

from gptforge.cli import run_cli
from gptforge.errors import ConfigError, DataError

try:
    from lm_eval.api.model import TemplateLM
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
except ImportError:  # pragma: no cover - depends on the environment
    raise ConfigError(
        "gptforge.eval.harness needs lm-evaluation-harness: pip install -e '.[eval]' (or pip install lm-eval)"
    ) from None

from gptforge.eval.host import LocalHost
from gptforge.eval.scoring import continuation_logprobs, greedy_answer
from gptforge.trainer.checkpoint import load_checkpoint
from gptforge.trainer.devices import resolve_device

MODEL_NAME = "gptforge"
Request = tuple[tuple[str, str] | None, list[int], list[int]]  # (strings, context ids, continuation ids)


class GptforgeLM(TemplateLM):
    """A gptforge checkpoint of any strategy (LoRA adapters applied), scored in one process, greedily."""

    def __init__(
        self,
        checkpoint: str,
        device: str | None = "auto",
        max_gen_toks: int = 256,
        batch_size: int | str | None = None,
        max_batch_size: int | None = None,
        **unused: object,
    ) -> None:
        super().__init__()
        del batch_size, max_batch_size, unused  # each context runs once with all its continuations
        on = _device(device)
        loaded = load_checkpoint(checkpoint, on)
        self.checkpoint = loaded.directory
        self.tokenizer = loaded.tokenizer
        self.host = LocalHost.auto(loaded.model, on)
        self._device = self.host.device
        self.block_size = loaded.cfg.model.block_size
        self.max_gen_toks = int(max_gen_toks)

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_id

    @property
    def max_length(self) -> int:
        return self.block_size

    @property
    def tokenizer_name(self) -> str:
        return f"gptforge:{self.checkpoint}"

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: object) -> list[int]:
        return self.tokenizer.encode(string)

    def tok_decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens)

    def _loglikelihood_tokens(self, requests: list[Request], disable_tqdm: bool = False, **kwargs: object):
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        groups = list(self._shared_contexts(requests))
        for group in tqdm(groups, disable=disable_tqdm, desc="Running loglikelihood requests"):
            _, context, _ = requests[group[0]]
            logprobs, greedy = continuation_logprobs(self.host, context, [requests[i][2] for i in group])
            for i, logprob, is_greedy in zip(group, logprobs, greedy, strict=True):
                results[i] = (logprob, is_greedy)
                if requests[i][0] is not None:
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], results[i])
        return results

    def _shared_contexts(self, requests: list[Request]) -> Iterator[list[int]]:
        """Requests with one context (a multiple-choice example's choices), to be scored together; a request
        whose context must be cut is scored alone, cut for its own continuation (as lm-eval cuts it)."""
        shared: dict[tuple[int, ...], list[int]] = {}
        for i, (_, context, continuation) in enumerate(requests):
            if len(continuation) > self.block_size:
                raise DataError(
                    f"a continuation of {len(continuation)} tokens is longer than the model's context window "
                    f"(model.block_size={self.block_size})"
                )
            if len(context) + len(continuation) > self.block_size + 1:
                yield [i]
            else:
                shared.setdefault(tuple(context), []).append(i)
        yield from shared.values()

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        results = []
        for (string,) in tqdm([r.args for r in requests], disable=disable_tqdm, desc="Rolling loglikelihood"):
            tokens = self.tok_encode(string)
            windows = get_rolling_token_windows(tokens, self.prefix_token_id, self.block_size, 1)
            total = 0.0
            for context, continuation in map(make_disjoint_window, windows):
                total += continuation_logprobs(self.host, context, [continuation])[0][0]
            self.cache_hook.add_partial("loglikelihood_rolling", (string,), total)
            results.append(total)
        return results

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        results = []
        for context, gen_kwargs in tqdm([r.args for r in requests], disable=disable_tqdm, desc="Generating"):
            kwargs = dict(gen_kwargs)
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new_tokens = int(kwargs.pop("max_gen_toks", self.max_gen_toks))
            if kwargs.get("do_sample") or float(kwargs.get("temperature") or 0.0) > 0:
                raise ConfigError(
                    f"the {MODEL_NAME} lm-eval model decodes greedily; this task asks for sampling "
                    f"({gen_kwargs}); set do_sample=false"
                )
            if max_new_tokens >= self.block_size:
                raise ConfigError(
                    f"max_gen_toks={max_new_tokens} leaves no room for the prompt in model.block_size="
                    f"{self.block_size}; pass --gen_kwargs max_gen_toks=<fewer>"
                )
            prompt = self.tok_encode(context) or [self.eot_token_id]
            answer = greedy_answer(
                self.host, prompt, max_new_tokens, self.eot_token_id, until, self.tokenizer.decode
            )
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), answer)
            results.append(answer)
        return results


def _device(name: str | None) -> torch.device:
    """lm-eval's --device (default cuda:0): a CUDA device where one is visible, else the CPU (as its `hf`)."""
    name = name or "auto"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device(name)
    return resolve_device(name)


def register() -> None:
    """Make `gptforge` a model name of lm-eval's registry (lm-eval imports this module when it is used)."""
    import lm_eval.models  # noqa: F401 - lm-eval's own models first: it skips them once the registry is set
    from lm_eval.api.registry import model_registry

    if MODEL_NAME not in model_registry:
        model_registry.register(MODEL_NAME, target="gptforge.eval.harness:GptforgeLM")


def main() -> None:
    """`lm_eval` with every one of its arguments, and `--model gptforge` known."""
    from lm_eval.__main__ import cli_evaluate

    register()
    cli_evaluate()


register()

if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
