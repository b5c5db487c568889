"""Tokenize a corpus once, shard by shard in parallel processes, into memmap-ready token shards."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from gptforge.data.memmap import write_shards
from gptforge.data.sources import DocumentSource
from gptforge.data.tokenizers import Tokenizer

_job: tuple[DocumentSource, Tokenizer, int] | None = None  # what forked pool workers tokenize


def _set_job(source: DocumentSource, tokenizer: Tokenizer, batch: int) -> None:
    global _job
    _job = (source, tokenizer, batch)


def tokenize_unit(unit: int) -> tuple[np.ndarray, int]:
    """All of shard `unit`'s non-empty documents, each followed by EOS, as uint32 ids; and their count."""
    source, tokenizer, batch = _job
    pieces, texts, n_docs = [], [], 0
    for text in [*source.documents(unit), None]:
        if text is not None and text.strip():
            texts.append(text)
        if texts and (text is None or len(texts) == batch):
            for ids in tokenizer.encode_batch(texts):
                pieces.append(np.asarray([*ids, tokenizer.eos_id], dtype=np.uint32))
            n_docs += len(texts)
            texts = []
    return (np.concatenate(pieces) if pieces else np.zeros(0, np.uint32)), n_docs


def prepare_shards(
    source: DocumentSource,
    tokenizer: Tokenizer,
    out_dir: Path,
    workers: int = 1,
    shard_tokens: int = 2**27,
    tokenize_batch: int = 256,
    progress: bool = True,
) -> dict:
    """Tokenize every shard of `source` in order, on `workers` processes, into `out_dir`; returns metadata."""
    _set_job(source, tokenizer, tokenize_batch)
    units = range(source.n_units)
    bar = tqdm(total=source.n_units, unit="file", desc="tokenizing", disable=not progress)

    def pieces(results: Iterator[tuple[np.ndarray, int]]) -> Iterator[tuple[np.ndarray, int]]:
        for result in results:
            bar.update()
            yield result

    try:
        if workers <= 1:
            return write_shards(out_dir, pieces(map(tokenize_unit, units)), tokenizer, shard_tokens)
        context = multiprocessing.get_context("fork")  # workers inherit the opened source and tokenizer
        with context.Pool(workers) as pool:
            results = pool.imap(tokenize_unit, units, chunksize=max(1, source.n_units // (8 * workers)))
            return write_shards(out_dir, pieces(results), tokenizer, shard_tokens)
    finally:
        bar.close()
