"""`benchmark.py data`: each loader path's tokens/s on a synthetic corpus (--copies x a text), start-up
excluded: memmap windows, streaming + BPE + packing with and without workers, and encoding alone."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from gptforge.cli import HelpFormatter
from gptforge.config import DataConfig, TokenizerConfig


def _time_loader(loader, tokens_per_batch: int, seconds: float) -> float:
    next(loader)  # start-up (workers, first chunk) is not throughput
    start, n_batches = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        next(loader)
        n_batches += 1
    return n_batches * tokens_per_batch / (time.perf_counter() - start)


def _write_corpus(corpus: Path, copies: int, out: Path) -> Path:
    text = corpus.read_text(encoding="utf-8")
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    out.mkdir()
    per_file = max(1, len(paragraphs) // 4)
    for copy in range(copies):
        for part in range(0, len(paragraphs), per_file):
            docs = [f"[{copy}] {p}" for p in paragraphs[part : part + per_file]]
            (out / f"c{copy:03d}_{part:06d}.txt").write_text("\n\n".join(docs), encoding="utf-8")
    return out


def loader_rates(
    corpus: Path,
    copies: int,
    workers: int,
    block_size: int,
    micro_batch_size: int,
    vocab_size: int,
    seconds: float,
) -> list[tuple[str, float]]:
    """tokens/s of each loader path on `copies` x `corpus`, with a BPE trained for it; the last entry is
    encoding alone (HF tokenizers' encode_batch)."""
    from gptforge.data import BatchLayout, build_data, build_tokenizer
    from gptforge.data.bpe import BPETokenizer, train_bpe
    from gptforge.data.prepare import prepare_shards
    from gptforge.data.sources import TextOptions, open_local

    layout = BatchLayout(block_size=block_size, micro_batch_size=micro_batch_size)
    tokens_per_batch = block_size * micro_batch_size
    rates = []
    with tempfile.TemporaryDirectory() as tmp:
        corpus = _write_corpus(Path(corpus), copies, Path(tmp) / "corpus")
        source = open_local(str(corpus), TextOptions(text_unit="paragraph"))
        texts = (t for u in range(min(source.n_units, 8)) for t in source.documents(u))
        bpe = BPETokenizer(train_bpe(texts, vocab_size, ["<|endoftext|>"]), "<|endoftext|>")
        bpe_dir = Path(tmp) / "bpe"
        bpe_dir.mkdir()
        bpe.save(bpe_dir)
        prepared = Path(tmp) / "prepared"
        prepare_shards(source, bpe, prepared, workers=workers, progress=False)
        tokenizer = build_tokenizer(TokenizerConfig(name="bpe", path=str(bpe_dir / "tokenizer.json")))

        runs = [("memmap random windows", DataConfig(source="memmap", path=str(prepared), val_fraction=0.0))]
        seq = DataConfig(source="memmap", path=str(prepared), val_fraction=0.0, sampling="sequential")
        runs.append(("memmap sequential windows", seq))
        for n in sorted({0, workers}):
            stream = DataConfig(
                source="local", path=str(corpus), text_unit="paragraph", val_fraction=0.0, num_workers=n
            )
            runs.append((f"streaming + BPE + packing, {n} workers", stream))
        # before any loader: workers turn tokenizers' own threads off in this process
        encode_texts = [t for u in range(min(source.n_units, 8)) for t in source.documents(u)]
        start = time.perf_counter()
        n_tokens = sum(len(ids) for ids in tokenizer.encode_batch(encode_texts))
        encode_rate = n_tokens / (time.perf_counter() - start)
        for name, cfg in runs:
            loader, _ = build_data(cfg, tokenizer, layout)
            rates.append((name, _time_loader(loader, tokens_per_batch, seconds)))
            if hasattr(loader, "close"):
                loader.close()
        rates.append(("HF tokenizers encode_batch alone", encode_rate))
    return rates


def bench_data(args: argparse.Namespace) -> None:
    sizes = f"BPE vocab {args.vocab_size}, T={args.block_size}, B={args.micro_batch_size}"
    print(f"corpus: {args.copies} x {args.corpus}, {sizes}")
    rates = loader_rates(
        Path(args.corpus),
        args.copies,
        args.workers,
        args.block_size,
        args.micro_batch_size,
        args.vocab_size,
        args.seconds,
    )
    for name, rate in rates:
        print(f"{name:40s} {rate / 1e6:8.2f}M tokens/s")


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    data = commands.add_parser(
        "data", help="data loader throughput per path (tokens/s)", formatter_class=HelpFormatter
    )
    data.add_argument(
        "--corpus", default="data/tinyshakespeare.txt", help="UTF-8 text to build the corpus from"
    )
    data.add_argument("--copies", type=int, default=8, help="copies of the corpus (each with distinct text)")
    data.add_argument("--workers", type=int, default=2, help="DataLoader workers for the streaming path")
    data.add_argument("--block-size", type=int, default=1024, help="T, tokens per sequence")
    data.add_argument("--micro-batch-size", type=int, default=16, help="B, sequences per batch")
    data.add_argument("--vocab-size", type=int, default=8192, help="BPE vocabulary trained for the run")
    data.add_argument("--seconds", type=float, default=5.0, help="timed seconds per path")
    data.set_defaults(run=bench_data)
    return data
