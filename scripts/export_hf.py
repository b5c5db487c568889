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
from pathlib import Path

import torch

from gptforge.cli import HelpFormatter, run_cli
from gptforge.data.chat import chat_template
from gptforge.data.hf_tokenizer import save_hf_tokenizer
from gptforge.models.hf import to_hf_state_dict
from gptforge.models.lora import merge_lora
from gptforge.trainer.checkpoint import load_checkpoint, write_hf_dir

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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
    save_hf_tokenizer(
        loaded.tokenizer, args.out_dir, loaded.cfg.model.block_size, chat_template(loaded.cfg.data)
    )
    print(f"wrote {args.out_dir}: {hf_config['architectures'][0]} from {loaded.directory}")
    return args.out_dir


if __name__ == "__main__":
    run_cli(main)
