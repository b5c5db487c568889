"""Small real corpora on disk for the data tests, and ways to read what a loader yields."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from gptforge.data.sources import DocumentSource, TextOptions, open_local
from gptforge.data.stream import StreamSpec
from gptforge.data.tokenizers import ByteTokenizer

BYTES = ByteTokenizer()


def doc(i: int) -> str:
    return f"doc{i:05d} " + "lorem ipsum " * (i % 5)


def write_jsonl(path: Path, ids: range) -> Path:
    path.write_text("".join(json.dumps({"text": doc(i), "id": i}) + "\n" for i in ids))
    return path


def write_txt_dir(directory: Path, n_files: int, docs_per_file: int) -> Path:
    """`n_files` .txt files of `docs_per_file` blank-line separated documents each."""
    directory.mkdir(parents=True, exist_ok=True)
    for f in range(n_files):
        ids = range(f * docs_per_file, (f + 1) * docs_per_file)
        (directory / f"part{f:04d}.txt").write_text("\n\n".join(doc(i) for i in ids) + "\n")
    return directory


def write_parquet(path: Path, ids: range) -> Path:
    pq.write_table(pa.table({"text": [doc(i) for i in ids]}), path, row_group_size=7)
    return path


def local_source(path: Path | str, text_unit: str = "paragraph") -> DocumentSource:
    return open_local(str(path), TextOptions(text_unit=text_unit))


def spec(sources: list[DocumentSource], block_len: int = 17, **overrides) -> StreamSpec:
    options = {"weights": [1.0] * len(sources), "tokenizer": BYTES, "block_len": block_len, "seed": 3}
    options |= {"shuffle_blocks": 8, "tokenize_batch": 4}
    return StreamSpec(sources, **(options | overrides))


def doc_ids(batches: list[torch.Tensor], tokenizer=BYTES) -> list[int]:
    """Ids of the documents that lie whole (between two EOS) in the concatenated rows of each batch."""
    ids = []
    for rows in batches:
        for row in rows:
            pieces = tokenizer.decode([t if t != tokenizer.eos_id else ord("|") for t in row.tolist()])
            ids += [int(p[3:8]) for p in pieces.split("|")[1:-1] if p.startswith("doc")]
    return ids
