"""Sample text from a checkpoint, with a KV cache, on CPU or GPU.

    python scripts/generate.py runs/shakespeare_char_cpu --prompt "ROMEO:" --max-new-tokens 300 --top-k 50

The argument may be a step_<N> dir, a checkpoints/ folder or a run directory (its newest valid checkpoint).
Sampling stops at the tokenizer's EOS unless --ignore-eos; the same --seed gives the same text on the same
device. On CUDA the forward runs under bf16 autocast where supported. GPTFORGE_DEBUG=1 shows tracebacks.
Past model.block_size tokens (prompt + new) the context slides, with a warning: the model sees only the
last block_size tokens (an exported Hugging Face GPT-2 model cannot go there at all).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import torch

from gptforge.cli import run_cli
from gptforge.errors import ConfigError
from gptforge.models import generate
from gptforge.serve.text import completion_text, prompt_ids
from gptforge.trainer.checkpoint import load_checkpoint
from gptforge.trainer.devices import resolve_device, resolve_precision


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("checkpoint", type=Path, help="a step_<N> dir, checkpoints/ folder or run dir")
    parser.add_argument("--prompt", default="", help="text to continue (default: start a new document)")
    parser.add_argument("--max-new-tokens", type=int, default=200, help="tokens to sample per sample")
    parser.add_argument("--temperature", type=float, default=0.8, help="0 is greedy")
    parser.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    parser.add_argument("--top-p", type=float, default=None, help="nucleus: smallest set covering p")
    parser.add_argument("--num-samples", type=int, default=1, help="samples, drawn as one batch")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--ignore-eos", action="store_true", help="keep sampling past EOS")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    args = parser.parse_args(argv)
    if args.temperature < 0 or args.max_new_tokens < 1 or args.num_samples < 1:
        raise ConfigError("--temperature must be >= 0, --max-new-tokens and --num-samples >= 1")
    if (args.top_k is not None and args.top_k < 1) or (args.top_p is not None and not 0 < args.top_p <= 1):
        raise ConfigError(f"--top-k={args.top_k} must be >= 1 and --top-p={args.top_p} in (0, 1]")
    return args


def main(argv: list[str] | None = None) -> list[str]:
    args = parse_args(argv)
    device = resolve_device(args.device)
    loaded = load_checkpoint(args.checkpoint, device)
    tokenizer = loaded.tokenizer
    ids = prompt_ids(tokenizer, args.prompt)
    block_size = loaded.cfg.model.block_size
    if len(ids) + args.max_new_tokens > block_size:
        print(
            f"warning: {len(ids)} prompt tokens + --max-new-tokens {args.max_new_tokens} run past "
            f"model.block_size={block_size}; from there the context slides (the model sees the last "
            f"{block_size} tokens), and an exported Hugging Face GPT-2 model would fail",
            file=sys.stderr,
        )
    prompt = torch.tensor([ids] * args.num_samples, device=device)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    dtype = resolve_precision("auto", device)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
    with autocast:
        out = generate(
            loaded.model,
            prompt,
            args.max_new_tokens,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            eos_id=None if args.ignore_eos else tokenizer.eos_id,
            generator=generator,
        )
    texts = [
        args.prompt + completion_text(tokenizer, row, stop_at_eos=not args.ignore_eos)
        for row in out[:, len(ids) :].tolist()
    ]
    for i, text in enumerate(texts):
        separator = "" if i == 0 else "\n" + "-" * 40 + "\n"
        sys.stdout.write(separator + text)
    sys.stdout.write("\n")
    return texts


if __name__ == "__main__":
    run_cli(main)
