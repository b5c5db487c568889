"""Tokenizers: char, byte, BPE trained on the bundled corpus, GPT-2 from a local file; saved and reloaded."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from conftest import ROOT, run_script

from gptforge.config import TokenizerConfig
from gptforge.data import build_tokenizer, load_tokenizer
from gptforge.data.tokenizers import tokenizer_fingerprint
from gptforge.errors import ConfigError, DataError
from gptforge.trainer.build import resolve_vocab_size

TEXT = "Héllo, world!\nSecond line — ünïcode."


def roundtrip(tokenizer, tmp_path: Path) -> None:
    ids = tokenizer.encode(TEXT)
    assert tokenizer.decode(ids) == TEXT
    assert tokenizer.encode_batch([TEXT, "Hé"]) == [ids, tokenizer.encode("Hé")]
    assert 0 <= tokenizer.eos_id < tokenizer.vocab_size and tokenizer.eos_id not in ids
    tokenizer.save(tmp_path)
    reloaded = load_tokenizer(tmp_path)
    assert reloaded.encode(TEXT) == ids and tokenizer_fingerprint(reloaded) == tokenizer_fingerprint(
        tokenizer
    )


def test_char_and_byte(tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    roundtrip(build_tokenizer(TokenizerConfig(name="char"), iter([TEXT[:10], TEXT[10:]])), tmp_path / "c")
    byte = build_tokenizer(TokenizerConfig(name="byte"))
    (tmp_path / "b").mkdir()
    roundtrip(byte, tmp_path / "b")
    assert byte.vocab_size == 257 and byte.eos_id == 256


@pytest.fixture(scope="module")
def shakespeare_bpe(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bpe")
    corpus = ROOT / "data" / "tinyshakespeare.txt"
    args = ["--input", str(corpus), "--out", str(out), "--vocab-size", "512", "--max-documents", "3000"]
    result = run_script("train_tokenizer.py", *args)
    assert result.returncode == 0, result.stderr
    return out / "tokenizer.json"


def test_bpe_trained_on_the_bundled_corpus(shakespeare_bpe: Path, tmp_path: Path) -> None:
    tokenizer = build_tokenizer(TokenizerConfig(name="bpe", path=str(shakespeare_bpe)))
    assert tokenizer.vocab_size == 512 and tokenizer.eos_id == 0
    assert len(tokenizer.encode("First Citizen:\nBefore we proceed")) < 20  # merges learned, not bytes
    roundtrip(tokenizer, tmp_path)


def test_bpe_vocab_larger_than_the_model_fails_naming_the_key(shakespeare_bpe: Path) -> None:
    tokenizer = build_tokenizer(TokenizerConfig(name="bpe", path=str(shakespeare_bpe)))
    with pytest.raises(
        ConfigError, match=r"model.vocab_size=256 is smaller than the tokenizer's vocabulary \(512\)"
    ):
        resolve_vocab_size(256, tokenizer.vocab_size, 1)


def test_bpe_is_loaded_from_an_existing_file_or_trained_on_a_corpus(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"tokenizer=bpe without tokenizer.path trains on the corpus"):
        build_tokenizer(TokenizerConfig(name="bpe"))
    trained = build_tokenizer(TokenizerConfig(name="bpe", vocab_size=300), ["to be or not to be"] * 20)
    assert trained.decode(trained.encode("not to be")) == "not to be"
    with pytest.raises(DataError, match=r"missing.json does not exist"):
        build_tokenizer(TokenizerConfig(name="bpe", path=str(tmp_path / "missing.json")))


def test_gpt2_from_a_local_ranks_file(tmp_path: Path) -> None:
    # a GPT-2-format ranks file with only the 256 byte tokens: real tiktoken, no download
    ranks = tmp_path / "mini.tiktoken"
    ranks.write_text("".join(f"{base64.b64encode(bytes([b])).decode()} {b}\n" for b in range(256)))
    tokenizer = build_tokenizer(TokenizerConfig(name="gpt2", path=str(ranks)))
    assert tokenizer.eos_id == 256 and tokenizer.vocab_size == 257
    roundtrip(tokenizer, tmp_path)


def test_gpt2_without_its_file_says_how_to_provide_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"does not exist; download .*r50k_base.tiktoken.*tokenizer.path"):
        build_tokenizer(TokenizerConfig(name="gpt2", path=str(tmp_path / "gpt2.tiktoken")))
