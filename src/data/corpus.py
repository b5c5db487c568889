"""Reading a text corpus from disk and splitting it into train and validation tokens."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gptforge.config import DataConfig
from gptforge.errors import DataError


def read_text(path: str | Path, encoding_errors: str = "strict") -> str:
    """Read a UTF-8 text file, with errors that name the file and say what is wrong.

    `encoding_errors="replace"` decodes bytes that are not UTF-8 as U+FFFD instead of failing.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file {path} does not exist; set data.path to a UTF-8 text file")
    if not path.is_file():
        raise DataError(f"data.path {path} is not a file")
    try:
        text = path.read_text(encoding="utf-8", errors=encoding_errors)
    except UnicodeDecodeError as err:
        raise DataError(
            f"{path} is not valid UTF-8 (byte {err.start}); convert it to UTF-8, or set "
            "data.encoding_errors=replace to decode it with U+FFFD"
        ) from None
    if not text.strip():
        raise DataError(f"{path} is empty; it needs text to train on")
    return text


def load_corpus(cfg: DataConfig) -> tuple[str, str]:
    """Train and validation text: `val_path` when set, else the last `val_fraction` of `path`."""
    text = read_text(cfg.path, cfg.encoding_errors)
    if cfg.val_path is not None:
        return text, read_text(cfg.val_path, cfg.encoding_errors)
    split = int(len(text) * (1.0 - cfg.val_fraction))
    return text[:split], text[split:]


def to_token_array(ids: list[int], vocab_size: int) -> np.ndarray:
    """Token ids in the smallest unsigned dtype that holds the vocabulary."""
    dtype = np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32
    return np.asarray(ids, dtype=dtype)
