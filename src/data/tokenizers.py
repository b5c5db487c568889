"""Tokenizers: text to token ids and back, saved beside checkpoints so a run always decodes as it encoded.

Each `tokenizer.name` is one class in `TOKENIZERS`, which builds it from the config (and the corpus, where
it learns from one), loads it from a directory it saved, and converts it for Hugging Face (`to_hf`).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol

from gptforge.config import TokenizerConfig
from gptforge.errors import DataError

if TYPE_CHECKING:
    from tokenizers import Tokenizer as HFTokenizer

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

    def to_hf(self) -> HFTokenizer: ...


class TokenizerSpec(Protocol):
    """What a tokenizer class offers the pipeline: how it is built, loaded, and whether from a corpus."""

    learns_from_corpus: ClassVar[bool]  # reads the training documents when built (char: its alphabet)
    trained: ClassVar[bool]  # learning is training, done once by rank 0 and sent to all (bpe)
    reads_file: ClassVar[bool]  # tokenizer.path names a file (or its directory) it loads

    @classmethod
    def build(cls, cfg: TokenizerConfig, corpus: Iterable[str] | None = None) -> Tokenizer: ...

    @classmethod
    def load(cls, directory: Path, meta: dict) -> Tokenizer: ...


class CharTokenizer:
    """One token per distinct character of the training corpus, plus EOS."""

    name = "char"
    learns_from_corpus = True
    trained = False
    reads_file = False

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

    @classmethod
    def build(cls, cfg: TokenizerConfig, corpus: Iterable[str] | None = None) -> CharTokenizer:
        if corpus is None:
            raise DataError("tokenizer=char learns its alphabet from the corpus, but none was given")
        return cls.from_text(corpus, cfg.eos_token)

    @classmethod
    def load(cls, directory: Path, meta: dict) -> CharTokenizer:
        return cls(meta["chars"], meta["eos_token"])

    def to_hf(self) -> HFTokenizer:
        from gptforge.data.hf_tokenizer import character_level, with_eos

        return with_eos(character_level(self.stoi), self.eos_token, self.eos_id)

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
    learns_from_corpus = False
    trained = False
    reads_file = False

    def __init__(self, eos_token: str = "<|endoftext|>") -> None:
        self.eos_token = eos_token

    @classmethod
    def build(cls, cfg: TokenizerConfig, corpus: Iterable[str] | None = None) -> ByteTokenizer:
        return cls(cfg.eos_token)

    @classmethod
    def load(cls, directory: Path, meta: dict) -> ByteTokenizer:
        return cls(meta["eos_token"])

    def to_hf(self) -> HFTokenizer:
        from gptforge.data.hf_tokenizer import byte_level, byte_to_unicode, with_eos

        vocab = {char: byte for byte, char in byte_to_unicode().items()}
        return with_eos(byte_level(vocab, [], use_regex=False), self.eos_token, self.eos_id)

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [list(text.encode("utf-8")) for text in texts]

    def decode(self, ids: list[int]) -> str:
        return bytes(i if i < 256 else 10 for i in ids).decode("utf-8", errors="replace")

    def save(self, directory: Path) -> None:
        meta = {"name": self.name, "eos_token": self.eos_token}
        (Path(directory) / TOKENIZER_FILE).write_text(json.dumps(meta))


# tokenizer.name -> "module:class"; the config's valid names are these
TOKENIZERS: dict[str, str] = {
    "char": "gptforge.data.tokenizers:CharTokenizer",
    "byte": "gptforge.data.tokenizers:ByteTokenizer",
    "bpe": "gptforge.data.bpe:BPETokenizer",
    "gpt2": "gptforge.data.tiktoken_gpt2:GPT2Tokenizer",
}


def tokenizer_class(name: str) -> TokenizerSpec:
    """The class registered as `name` (one of TOKENIZERS)."""
    module, _, cls = TOKENIZERS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def load_tokenizer(directory: Path) -> Tokenizer:
    """Load the tokenizer a run, checkpoint or prepared shard directory saved."""
    path = Path(directory) / TOKENIZER_FILE
    if not path.is_file():
        raise DataError(f"no tokenizer saved at {path}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(
            f"{path} is not a readable tokenizer record ({err}); restore it from a checkpoint"
        ) from None
    if meta.get("name") not in TOKENIZERS:
        raise DataError(f"{path}: unknown tokenizer {meta.get('name')!r}; known: {', '.join(TOKENIZERS)}")
    return tokenizer_class(meta["name"]).load(Path(directory), meta)


def build_tokenizer(cfg: TokenizerConfig, corpus: str | Iterable[str] | None = None) -> Tokenizer:
    """Build the configured tokenizer; one that learns from a corpus (char, bpe without a file) reads
    `corpus`, the training documents."""
    return tokenizer_class(cfg.name).build(cfg, [corpus] if isinstance(corpus, str) else corpus)


def tokenizer_fingerprint(tokenizer: Tokenizer) -> str:
    """sha256 over what `save` writes: equal fingerprints encode every text alike."""
    digest = hashlib.sha256()
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save(Path(tmp))
        for path in sorted(Path(tmp).iterdir()):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()
