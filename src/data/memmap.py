"""Pre-tokenized shards: written once by scripts/prepare_data.py, read as memory maps at any speed."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from gptforge.data.tokenizers import Tokenizer, load_tokenizer, tokenizer_fingerprint
from gptforge.errors import DataError

METADATA_FILE = "metadata.json"
FORMAT = "gptforge-tokens-v1"


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits, else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def tokenizer_record(tokenizer: Tokenizer) -> dict:
    return {
        "name": tokenizer.name,
        "vocab_size": tokenizer.vocab_size,
        "eos_id": tokenizer.eos_id,
        "fingerprint": tokenizer_fingerprint(tokenizer),
    }


def write_shards(
    out_dir: Path, pieces: Iterable[tuple[np.ndarray, int]], tokenizer: Tokenizer, shard_tokens: int = 2**27
) -> dict:
    """Write (tokens, documents in them) pieces, EOS after each document, as shards + metadata.

    Everything goes to a temporary directory renamed to `out_dir` at the end, so a failure leaves nothing
    behind, and an existing `out_dir` is never written over.
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise DataError(f"{out_dir} already exists; choose a new output directory (nothing was written)")
    tmp_dir = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    tmp_dir.mkdir(parents=True)
    try:
        dtype = token_dtype(tokenizer.vocab_size)
        shards: list[dict] = []
        pending: list[np.ndarray] = []
        n_pending = n_documents = 0

        def flush() -> None:
            nonlocal pending, n_pending
            data = np.concatenate(pending).astype(dtype)
            name = f"tokens_{len(shards):05d}.bin"
            data.tofile(tmp_dir / name)
            sha = hashlib.sha256(data.tobytes()).hexdigest()
            shards.append({"file": name, "num_tokens": len(data), "sha256": sha})
            pending, n_pending = [], 0

        for ids, n_docs in pieces:
            pending.append(ids)
            n_pending += len(ids)
            n_documents += n_docs
            if n_pending >= shard_tokens:
                flush()
        if pending:
            flush()
        if not n_documents:
            raise DataError("the corpus holds no documents; nothing to prepare")
        metadata = {
            "format": FORMAT,
            "dtype": dtype.name,
            "num_tokens": sum(s["num_tokens"] for s in shards),
            "num_documents": n_documents,
            "tokenizer": tokenizer_record(tokenizer),
            "shards": shards,
            "checksum": hashlib.sha256("".join(s["sha256"] for s in shards).encode()).hexdigest(),
        }
        tokenizer.save(tmp_dir)
        (tmp_dir / METADATA_FILE).write_text(json.dumps(metadata, indent=2))
        tmp_dir.rename(out_dir)
    finally:
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir)
    return metadata


def read_metadata(directory: Path, key: str = "data.path") -> dict:
    path = Path(directory) / METADATA_FILE
    if not Path(directory).is_dir():
        raise DataError(f"{key}={directory} does not exist; prepare shards with scripts/prepare_data.py")
    if not path.is_file():
        raise DataError(f"{directory} has no {METADATA_FILE}; prepare shards with scripts/prepare_data.py")
    try:
        metadata = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is not valid JSON ({err.msg})") from None
    if metadata.get("format") != FORMAT:
        raise DataError(f"{path}: format {metadata.get('format')!r} is not {FORMAT}; prepare the data again")
    return metadata


def saved_tokenizer(directory: Path) -> Tokenizer:
    """The tokenizer the shards were prepared with."""
    return load_tokenizer(Path(directory))


def open_shards(directory: Path, tokenizer: Tokenizer, key: str = "data.path") -> list[np.memmap]:
    """Memory maps of the shards, after checking they were made with `tokenizer` and are whole."""
    directory = Path(directory)
    metadata = read_metadata(directory, key)
    expected = metadata["tokenizer"]
    actual = tokenizer_record(tokenizer)
    for field in ("name", "vocab_size", "eos_id", "fingerprint"):
        if expected[field] != actual[field]:
            raise DataError(
                f"{directory / METADATA_FILE}: prepared with tokenizer {field} {expected[field]!r}, but the "
                f"run's tokenizer has {actual[field]!r}; prepare the data with this tokenizer or configure "
                f"the one it used ({expected['name']})"
            )
    dtype = np.dtype(metadata["dtype"])
    arrays = []
    for shard in metadata["shards"]:
        path = directory / shard["file"]
        size = path.stat().st_size if path.is_file() else -1
        if size != shard["num_tokens"] * dtype.itemsize:
            raise DataError(
                f"{path}: expected {shard['num_tokens']} {dtype.name} tokens, found "
                f"{'no file' if size < 0 else f'{size} bytes'}; prepare the data again"
            )
        arrays.append(np.memmap(path, dtype=dtype, mode="r"))
    return arrays


def verify_checksums(directory: Path) -> None:
    """Re-hash every shard against its metadata (reads every byte: use it after a copy, not each run)."""
    metadata = read_metadata(Path(directory))
    for shard in metadata["shards"]:
        path = Path(directory) / shard["file"]
        if hashlib.sha256(path.read_bytes()).hexdigest() != shard["sha256"]:
            raise DataError(f"{path}: checksum does not match {METADATA_FILE}; the file is corrupt")


def split_tail(arrays: list[np.ndarray], fraction: float) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(head, tail) of the concatenated arrays, the tail holding the last `fraction` of the tokens."""
    total = sum(len(a) for a in arrays)
    cut = int(total * (1.0 - fraction))
    head, tail, start = [], [], 0
    for array in arrays:
        end = start + len(array)
        if start < cut:
            head.append(array[: cut - start])
        if end > cut:
            tail.append(array[max(cut - start, 0) :])
        start = end
    return head, tail
