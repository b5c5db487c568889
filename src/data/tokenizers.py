"""Tokenizers: text to token ids and back, saved beside checkpoints so a run always decodes as it encoded."""

from __future__ import annotations

import json
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

    def encode(self, text: str) -> list[int]: ...

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
    def from_text(cls, text: str, eos_token: str = "<|endoftext|>") -> CharTokenizer:
        return cls(sorted(set(text)), eos_token)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[ch] for ch in text]
        except KeyError as err:
            raise DataError(f"character {err.args[0]!r} is not in the char tokenizer's vocabulary") from None

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i] if i < len(self.chars) else "\n" for i in ids)

    def save(self, directory: Path) -> None:
        meta = {"name": self.name, "chars": self.chars, "eos_token": self.eos_token}
        (Path(directory) / TOKENIZER_FILE).write_text(json.dumps(meta, ensure_ascii=False))


def load_tokenizer(directory: Path) -> Tokenizer:
    """Load the tokenizer a run or checkpoint saved."""
    path = Path(directory) / TOKENIZER_FILE
    if not path.is_file():
        raise DataError(f"no tokenizer saved at {path}")
    meta = json.loads(path.read_text())
    if meta["name"] == "char":
        return CharTokenizer(meta["chars"], meta["eos_token"])
    raise DataError(f"{path}: unknown tokenizer {meta['name']!r}")


def build_tokenizer(cfg: TokenizerConfig, corpus_text: str) -> Tokenizer:
    """Build the configured tokenizer; `char` learns its alphabet from the training corpus."""
    if cfg.name == "char":
        return CharTokenizer.from_text(corpus_text, cfg.eos_token)
    raise DataError(f"tokenizer.name={cfg.name!r} is not available yet; use tokenizer=char")
