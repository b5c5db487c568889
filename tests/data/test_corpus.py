"""The in-memory corpus (`data=shakespeare_char` and any `source=text_file`): reading and the split."""

from __future__ import annotations

from pathlib import Path

import pytest

from gptforge.config import DataConfig
from gptforge.data import BatchLayout, build_data, load_corpus
from gptforge.data.tokenizers import ByteTokenizer
from gptforge.errors import DataError


def test_the_last_val_fraction_of_the_text_is_held_out(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text("a" * 90 + "b" * 10)
    train, val = load_corpus(DataConfig(path=str(path), val_fraction=0.1))
    assert (train, val) == ("a" * 90, "b" * 10)


def test_text_that_is_not_utf8_fails_by_name_unless_replaced(tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\xe9 au lait\n".encode("latin-1") * 10)
    with pytest.raises(DataError, match=r"latin1.txt is not valid UTF-8 \(byte 3\).*encoding_errors=replace"):
        load_corpus(DataConfig(path=str(path)))
    train, _ = load_corpus(DataConfig(path=str(path), encoding_errors="replace"))
    assert train.startswith("caf\ufffd au lait\n")


def test_too_little_text_for_one_window_is_found_before_training(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text("to be or not to be, that is the question. " * 3)  # 126 bytes: 113 train, 13 val
    tokenizer = ByteTokenizer()
    with pytest.raises(
        DataError, match=r"data.path=.*corpus.txt has 113 tokens.*block_size=128 \(it needs 130\)"
    ):
        build_data(DataConfig(path=str(path)), tokenizer, BatchLayout(block_size=128, micro_batch_size=2))
    with pytest.raises(DataError, match=r"the validation data has 13 tokens.*raise data.val_fraction"):
        build_data(DataConfig(path=str(path)), tokenizer, BatchLayout(block_size=16, micro_batch_size=2))
