"""Tokenize a corpus once into binary token shards plus metadata.json, for `data=memmap`.

    python scripts/prepare_data.py --input data/corpus/ --out data/prepared --tokenizer bpe \
        --tokenizer-path tokenizers/my_bpe/tokenizer.json --workers 2

Shards hold uint16 ids when the vocabulary fits, else uint32; each document is followed by EOS. The
metadata records the tokenizer (name, vocabulary size, EOS id, fingerprint), token and document counts
and sha256 checksums. An existing --out is never written over.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from gptforge.cli import run_cli
from gptforge.config import DataConfig, TokenizerConfig
from gptforge.data.pipeline import build_data_tokenizer
from gptforge.data.prepare import prepare_shards
from gptforge.data.sources import open_local


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, help="a file, directory or glob of .txt/.jsonl/.parquet")
    parser.add_argument("--out", required=True, type=Path, help="new directory for the shards")
    parser.add_argument("--tokenizer", default="byte", help="char, byte, bpe or gpt2 (default: byte)")
    parser.add_argument("--tokenizer-path", help="bpe: tokenizer.json; gpt2: local .tiktoken file")
    parser.add_argument("--text-format", default="auto", help="auto (by extension), text, json or parquet")
    parser.add_argument("--text-field", default="text", help="json/parquet column holding the text")
    parser.add_argument("--text-unit", default="document", help=".txt documents: document, paragraph, line")
    parser.add_argument("--encoding-errors", default="strict", help="strict or replace (non-UTF-8 bytes)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="tokenizing processes")
    parser.add_argument("--shard-tokens", type=int, default=2**27, help="tokens per shard file")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    data_cfg = DataConfig(
        source="local",
        path=args.input,
        text_format=args.text_format,
        text_field=args.text_field,
        text_unit=args.text_unit,
        encoding_errors=args.encoding_errors,
    )
    tokenizer = build_data_tokenizer(data_cfg, TokenizerConfig(name=args.tokenizer, path=args.tokenizer_path))
    source = open_local(args.input, args.text_format, args.text_field, args.text_unit, args.encoding_errors)
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
