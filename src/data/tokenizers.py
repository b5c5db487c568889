"""Tokenizers: text to token ids and back, saved beside checkpoints so a run always decodes as it encoded."""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from gptforge.config import TokenizerConfig
from gptforge.errors import DataError

TOKENIZER_FILE = "tokenizer_meta.json"


class Tokenizer(Protocol):
    """What the rest of gptforge needs of a tokenizer."""

    name: str
    vocab_size: int
    eos_id: int
    eos_token: str

    def encode(self, text: str) -> list[int]: ...

    def encode_batch(self, texts: list[str]) -> list[list[int]]: ...

    def decode(self, ids: list[int]) -> str: ...

    def save(self, directory: Path) -> None: ...


class CharTokenizer:
    """One token per distinct character of the training corpus, plus EOS."""

    name = "char"

    def __init__(self, chars: list[str], eos_token: str = "<|endoftext|>") -> None:
        self.chars = chars
        self.eos_token = eos_token
        self.stoi = {ch: i for i, ch in enumerate(chars)}
        self.eos_id = len(chars)
        self.vocab_size = len(chars) + 1

    @classmethod
    def from_text(cls, text: str | Iterable[str], eos_token: str = "<|endoftext|>") -> CharTokenizer:
        chars: set[str] = set()
        for piece in [text] if isinstance(text, str) else text:
            chars.update(piece)
        return cls(sorted(chars), eos_token)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[ch] for ch in text]
        except KeyError as err:
            raise DataError(f"character {err.args[0]!r} is not in the char tokenizer's vocabulary") from None

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(text) for text in texts]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i] if i < len(self.chars) else "\n" for i in ids)

    def save(self, directory: Path) -> None:
        meta = {"name": self.name, "chars": self.chars, "eos_token": self.eos_token}
        (Path(directory) / TOKENIZER_FILE).write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")


class ByteTokenizer:
    """The 256 byte values of UTF-8 text, plus EOS (id 256)."""

    name = "byte"
    vocab_size = 257
    eos_id = 256

    def __init__(self, eos_token: str = "<|endoftext|>") -> None:
        self.eos_token = eos_token

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [list(text.encode("utf-8")) for text in texts]

    def decode(self, ids: list[int]) -> str:
        return bytes(i if i < 256 else 10 for i in ids).decode("utf-8", errors="replace")

    def save(self, directory: Path) -> None:
        meta = {"name": self.name, "eos_token": self.eos_token}
        (Path(directory) / TOKENIZER_FILE).write_text(json.dumps(meta))


def load_tokenizer(directory: Path) -> Tokenizer:
    """Load the tokenizer a run, checkpoint or prepared shard directory saved."""
    from gptforge.data.bpe import BPETokenizer
    from gptforge.data.tiktoken_gpt2 import GPT2Tokenizer

    path = Path(directory) / TOKENIZER_FILE
    if not path.is_file():
        raise DataError(f"no tokenizer saved at {path}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(
            f"{path} is not a readable tokenizer record ({err}); restore it from a checkpoint"
        ) from None
    if meta["name"] == "char":
        return CharTokenizer(meta["chars"], meta["eos_token"])
    if meta["name"] == "byte":
        return ByteTokenizer(meta["eos_token"])
    if meta["name"] == "bpe":
        return BPETokenizer.from_file(Path(directory) / meta["file"], meta["eos_token"])
    if meta["name"] == "gpt2":
        return GPT2Tokenizer.from_file(Path(directory) / meta["file"])
    raise DataError(f"{path}: unknown tokenizer {meta['name']!r}")


def build_tokenizer(cfg: TokenizerConfig, corpus_text: str | Iterable[str] | None = None) -> Tokenizer:
    """Build the configured tokenizer; `char` learns its alphabet from the training corpus."""
    from gptforge.data.bpe import BPETokenizer
    from gptforge.data.tiktoken_gpt2 import GPT2Tokenizer

    if cfg.name == "char":
        if corpus_text is None:
            raise DataError("tokenizer=char learns its alphabet from the corpus, but none was given")
        return CharTokenizer.from_text(corpus_text, cfg.eos_token)
    if cfg.name == "byte":
        return ByteTokenizer(cfg.eos_token)
    if cfg.name == "bpe":
        if cfg.path is None:
            raise DataError(
                "tokenizer.path is not set; tokenizer=bpe loads a tokenizer.json: train one with "
                "`python scripts/train_tokenizer.py --input <corpus> --out <dir>` and set tokenizer.path"
            )
        return BPETokenizer.from_file(Path(cfg.path), cfg.eos_token)
    if cfg.name == "gpt2":
        return GPT2Tokenizer.from_file(Path(cfg.path)) if cfg.path else GPT2Tokenizer.download()
    raise DataError(f"tokenizer.name={cfg.name!r} is not valid; use char, byte, bpe or gpt2")


def tokenizer_fingerprint(tokenizer: Tokenizer) -> str:
    """sha256 over what `save` writes: equal fingerprints encode every text alike."""
    digest = hashlib.sha256()
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save(Path(tmp))
        for path in sorted(Path(tmp).iterdir()):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()
