"""Tokenize a corpus once into binary token shards plus metadata.json, for `data=memmap`.

    python scripts/prepare_data.py --input data/corpus/ --out data/prepared --tokenizer bpe \
        --tokenizer-path tokenizers/my_bpe/tokenizer.json --workers 2

Shards hold uint16 ids when the vocabulary fits, else uint32; each document is followed by EOS. The
metadata records the tokenizer (name, vocabulary size, EOS id, fingerprint), token and document counts
and sha256 checksums. The corpus options read files as train.py's data.* keys of the same names do. An
existing --out is never written over.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from gptforge.cli import HelpFormatter, add_corpus_arguments, corpus_config, run_cli
from gptforge.config import TokenizerConfig
from gptforge.data.pipeline import build_data_tokenizer, train_corpus_tokenizer, trains_its_tokenizer
from gptforge.data.prepare import prepare_shards
from gptforge.data.sources import TextOptions, open_local


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--input", required=True, help="a file, directory or glob of .txt/.jsonl/.parquet")
    parser.add_argument("--out", required=True, type=Path, help="new directory for the shards")
    parser.add_argument("--tokenizer", default="byte", help="char, byte, bpe or gpt2")
    parser.add_argument(
        "--tokenizer-path",
        help="bpe: tokenizer.json (without one, a BPE is trained on the corpus); gpt2: .tiktoken",
    )
    parser.add_argument("--vocab-size", type=int, default=8192, help="bpe trained here: vocabulary in tokens")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="tokenizing processes")
    parser.add_argument("--shard-tokens", type=int, default=2**27, help="tokens per shard file")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_corpus_arguments(parser)
    args = parser.parse_args(argv)

    data_cfg = corpus_config(args, args.input)
    tokenizer_cfg = TokenizerConfig(name=args.tokenizer, path=args.tokenizer_path, vocab_size=args.vocab_size)
    if trains_its_tokenizer(data_cfg, tokenizer_cfg):
        tokenizer = train_corpus_tokenizer(data_cfg, tokenizer_cfg)
    else:
        tokenizer = build_data_tokenizer(data_cfg, tokenizer_cfg)
    source = open_local(args.input, TextOptions.of(data_cfg), key="--input")
    metadata = prepare_shards(
        source, tokenizer, args.out, args.workers, args.shard_tokens, progress=not args.quiet
    )
    print(
        f"wrote {args.out}: {metadata['num_tokens']:,} tokens ({metadata['dtype']}) from "
        f"{metadata['num_documents']:,} documents in {len(metadata['shards'])} shard(s), "
        f"tokenizer {tokenizer.name} (vocab {tokenizer.vocab_size})"
    )
    return metadata


if __name__ == "__main__":
    run_cli(main)
