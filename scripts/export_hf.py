"""Export a checkpoint as a Hugging Face `transformers` model directory.

    python scripts/export_hf.py runs/my_run/checkpoints/step_2000 exported/my_model [--dtype bfloat16]

GPT-2 flavour becomes GPT2LMHeadModel, Llama flavour LlamaForCausalLM: config.json and model.safetensors,
LoRA adapters merged in. `transformers` is not needed to export, only to load the result:
AutoModelForCausalLM.from_pretrained(<out_dir>) and AutoTokenizer.from_pretrained(<out_dir>).
The argument may also be a run directory or its checkpoints/ folder (their newest valid checkpoint).

Tokenizer files (tokenizer.json for PreTrainedTokenizerFast, tokenizer_config.json): bpe is copied as
trained; gpt2 (tiktoken) and byte are written as the equivalent byte-level BPE; char has no HF class of its
own and is written as a one-character-per-token WordLevel tokenizer, which encodes exactly the characters
it was trained on (any other character is an error, as in gptforge) and decodes by joining. A fine-tune
(data=sft) gets the chat format's `chat_template` (gptforge.data.chat), so apply_chat_template gives the
prompts gptforge trained on and serves. gptforge's own tokenizer files are written too, so the directory
also works with `trainer.init_from=hf:<out_dir>`.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import torch
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from gptforge.cli import HelpFormatter, run_cli
from gptforge.data import Tokenizer
from gptforge.data.chat import chat_template
from gptforge.models.hf import to_hf_state_dict
from gptforge.models.lora import merge_lora
from gptforge.trainer.pretrained import load_checkpoint, write_hf_dir

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in character for each byte, as byte-level BPE vocabularies spell tokens."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            mapping[byte] = chr(byte)
        else:
            mapping[byte] = chr(256 + extra)
            extra += 1
    return mapping


def _byte_level(vocab: dict[str, int], merges: list[tuple[str, str]], use_regex: bool) -> HFTokenizer:
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=merges))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=use_regex)
    hf.decoder = decoders.ByteLevel()
    return hf


def _tiktoken_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    # each multi-byte token is the merge of the two parts that BPE, limited to lower ranks, leaves
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) == 1:
            continue
        parts = [bytes([b]) for b in token]
        while len(parts) > 2:
            pair_ranks = [ranks.get(a + b, rank) for a, b in itertools.pairwise(parts)]
            best = min(range(len(pair_ranks)), key=pair_ranks.__getitem__)
            if pair_ranks[best] >= rank:
                break
            parts[best : best + 2] = [parts[best] + parts[best + 1]]
        merges.append((parts[0], parts[1]))
    return merges


def hf_tokenizer(tokenizer: Tokenizer) -> HFTokenizer:
    """The `tokenizers` equivalent of a gptforge tokenizer, EOS included as a special token."""
    if tokenizer.name == "bpe":
        hf = HFTokenizer.from_str(tokenizer.hf_tokenizer.to_str())
    elif tokenizer.name == "gpt2":
        spell = byte_to_unicode()

        def text(token: bytes) -> str:
            return "".join(spell[b] for b in token)

        vocab = {text(token): rank for token, rank in tokenizer.mergeable_ranks.items()}
        merges = [(text(a), text(b)) for a, b in _tiktoken_merges(tokenizer.mergeable_ranks)]
        hf = _byte_level(vocab, merges, use_regex=True)  # the regex is GPT-2's pre-tokenizer
    elif tokenizer.name == "byte":
        hf = _byte_level({char: byte for byte, char in byte_to_unicode().items()}, [], use_regex=False)
    elif tokenizer.name == "char":
        hf = HFTokenizer(models.WordLevel(vocab=dict(tokenizer.stoi), unk_token=None))
        hf.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        hf.decoder = decoders.Fuse()
    else:
        raise ValueError(f"no Hugging Face conversion for tokenizer {tokenizer.name!r}")
    hf.add_special_tokens([AddedToken(tokenizer.eos_token, special=True, normalized=False)])
    if hf.token_to_id(tokenizer.eos_token) != tokenizer.eos_id:
        raise ValueError(f"EOS {tokenizer.eos_token!r} would get another id than {tokenizer.eos_id}")
    return hf


def write_tokenizer(
    tokenizer: Tokenizer, out_dir: Path, max_length: int, template: str | None = None
) -> None:
    """tokenizer.json + tokenizer_config.json for AutoTokenizer, and gptforge's own tokenizer files."""
    tokenizer.save(out_dir)
    hf_tokenizer(tokenizer).save(str(out_dir / "tokenizer.json"))
    eos = tokenizer.eos_token
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": eos,
        "eos_token": eos,
        "model_max_length": max_length,
        "clean_up_tokenization_spaces": False,
    }
    if template is not None:
        config["chat_template"] = template
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    special = {"bos_token": eos, "eos_token": eos}
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="a step_<N> dir, checkpoints/ folder or run dir")
    parser.add_argument("out_dir", type=Path, help="the Hugging Face model directory to write")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="weights' dtype")
    args = parser.parse_args(argv)
    loaded = load_checkpoint(args.checkpoint)
    model = merge_lora(loaded.model)
    hf_config, state = to_hf_state_dict(model, loaded.cfg.model, eos_token_id=loaded.tokenizer.eos_id)
    state = {name: tensor.to(DTYPES[args.dtype]) for name, tensor in state.items()}
    hf_config["torch_dtype"] = args.dtype
    write_hf_dir(args.out_dir, hf_config, state)
    write_tokenizer(
        loaded.tokenizer, args.out_dir, loaded.cfg.model.block_size, chat_template(loaded.cfg.data)
    )
    print(f"wrote {args.out_dir}: {hf_config['architectures'][0]} from {loaded.directory}")
    return args.out_dir


if __name__ == "__main__":
    run_cli(main)
