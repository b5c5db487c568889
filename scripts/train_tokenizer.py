"""Train a byte-level BPE tokenizer (Hugging Face tokenizers) on a corpus, for `tokenizer=bpe`.

    python scripts/train_tokenizer.py --input data/tinyshakespeare.txt --out tokenizers/shakespeare \
        --vocab-size 4096
    python scripts/train_tokenizer.py --input src/ --out tokenizers/code --text-suffixes .py \
        --text-unit document
    python scripts/train.py tokenizer=bpe tokenizer.path=tokenizers/shakespeare/tokenizer.json ...

A run with `tokenizer=bpe` and no `tokenizer.path` trains one on its own corpus instead; this script is for
sharing one tokenizer among runs. The corpus options read files as train.py's data.* keys of the same names
do. The EOS token (default <|endoftext|>) and any --special-token take the first ids.
"""

from __future__ import annotations

import argparse
from itertools import islice
from pathlib import Path

from gptforge.cli import HelpFormatter, add_corpus_arguments, corpus_config, run_cli
from gptforge.data.bpe import BPE_FILE, BPETokenizer, train_bpe
from gptforge.data.sources import TextOptions, open_local
from gptforge.errors import DataError


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--input", required=True, help="a file, directory or glob of .txt/.jsonl/.parquet")
    parser.add_argument("--out", required=True, type=Path, help="directory to write tokenizer.json into")
    parser.add_argument("--vocab-size", type=int, default=8192, help="target vocabulary size in tokens")
    parser.add_argument("--eos-token", default="<|endoftext|>", help="end-of-document token")
    parser.add_argument("--special-token", action="append", default=[], help="more special tokens")
    parser.add_argument("--max-documents", type=int, help="train on at most this many documents; None: all")
    add_corpus_arguments(parser)
    args = parser.parse_args(argv)

    out_file = args.out / BPE_FILE
    if out_file.exists():
        raise DataError(f"{out_file} already exists; choose another --out (nothing was written)")
    source = open_local(args.input, TextOptions.of(corpus_config(args, args.input)), key="--input")
    texts = (t for unit in range(source.n_units) for t in source.documents(unit) if t.strip())
    hf_tokenizer = train_bpe(
        islice(texts, args.max_documents), args.vocab_size, [args.eos_token, *args.special_token]
    )
    tokenizer = BPETokenizer(hf_tokenizer, args.eos_token)
    args.out.mkdir(parents=True, exist_ok=True)
    hf_tokenizer.save(str(out_file))
    print(f"wrote {out_file}: vocab {tokenizer.vocab_size}, EOS {args.eos_token!r} = id {tokenizer.eos_id}")
    return out_file


if __name__ == "__main__":
    run_cli(main)
