"""Byte-level BPE through Hugging Face `tokenizers`: load a tokenizer.json or train one from documents."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from gptforge.config import TokenizerConfig
from gptforge.data.tokenizers import TOKENIZER_FILE
from gptforge.errors import DataError

BPE_FILE = "tokenizer.json"


class BPETokenizer:
    """A `tokenizers` BPE whose vocabulary holds the EOS token; batches encode on Rust threads."""

    name = "bpe"
    learns_from_corpus = True  # without tokenizer.path
    trained = True
    reads_file = True

    def __init__(self, hf_tokenizer: HFTokenizer, eos_token: str, origin: str = "tokenizer") -> None:
        eos_id = hf_tokenizer.token_to_id(eos_token)
        if eos_id is None:
            raise DataError(
                f"{origin} has no {eos_token!r} token; train it with that special token "
                "(scripts/train_tokenizer.py adds it) or set tokenizer.eos_token"
            )
        self.hf_tokenizer = hf_tokenizer
        self.eos_token = eos_token
        self.eos_id = eos_id
        self.vocab_size = hf_tokenizer.get_vocab_size()

    @classmethod
    def from_file(cls, path: Path, eos_token: str = "<|endoftext|>") -> BPETokenizer:
        if path.is_dir():
            path = path / BPE_FILE
        if not path.is_file():
            raise DataError(
                f"tokenizer.path {path} does not exist; train one with scripts/train_tokenizer.py"
            )
        try:
            hf_tokenizer = HFTokenizer.from_file(str(path))
        except Exception as err:
            raise DataError(f"{path} is not a tokenizers tokenizer.json ({err})") from None
        return cls(hf_tokenizer, eos_token, str(path))

    @classmethod
    def build(cls, cfg: TokenizerConfig, corpus: Iterable[str] | None = None) -> BPETokenizer:
        """Loaded from `tokenizer.path`, or trained on `corpus` to `tokenizer.vocab_size` tokens."""
        if cfg.path is not None:
            return cls.from_file(Path(cfg.path), cfg.eos_token)
        if corpus is None:
            raise DataError("tokenizer=bpe without tokenizer.path trains on the corpus, but none was given")
        return cls(train_bpe(corpus, cfg.vocab_size, [cfg.eos_token]), cfg.eos_token)

    @classmethod
    def load(cls, directory: Path, meta: dict) -> BPETokenizer:
        return cls.from_file(Path(directory) / meta["file"], meta["eos_token"])

    def to_hf(self) -> HFTokenizer:
        from gptforge.data.hf_tokenizer import with_eos

        return with_eos(HFTokenizer.from_str(self.hf_tokenizer.to_str()), self.eos_token, self.eos_id)

    def encode(self, text: str) -> list[int]:
        return self.hf_tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.hf_tokenizer.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self.hf_tokenizer.decode(ids, skip_special_tokens=False)

    def save(self, directory: Path) -> None:
        self.hf_tokenizer.save(str(Path(directory) / BPE_FILE))
        meta = {"name": self.name, "file": BPE_FILE, "eos_token": self.eos_token}
        (Path(directory) / TOKENIZER_FILE).write_text(json.dumps(meta))


def train_bpe(texts: Iterable[str], vocab_size: int, special_tokens: list[str]) -> HFTokenizer:
    """A byte-level BPE (GPT-2 style) trained on `texts`; special tokens take the first ids."""
    tokenizer = HFTokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer
