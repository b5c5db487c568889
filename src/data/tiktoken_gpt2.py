"""GPT-2's BPE through tiktoken, from a local `.tiktoken` file or tiktoken's download cache."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import TYPE_CHECKING

from gptforge.config import TokenizerConfig
from gptforge.data.tokenizers import TOKENIZER_FILE
from gptforge.errors import DataError

if TYPE_CHECKING:
    from tokenizers import Tokenizer as HFTokenizer

GPT2_FILE = "gpt2.tiktoken"
EOT = "<|endoftext|>"
RANKS_URL = "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken"  # GPT-2's ranks
HOW_TO_PROVIDE = (
    f"download {RANKS_URL} once (GPT-2's BPE ranks) and set tokenizer.path=<that file>, "
    "or point TIKTOKEN_CACHE_DIR at a cache holding it"
)


def _tiktoken():
    try:
        import tiktoken
        import tiktoken.load
    except ImportError:
        raise DataError("tokenizer=gpt2 needs tiktoken; pip install tiktoken") from None
    return tiktoken


class GPT2Tokenizer:
    """GPT-2's 50,257-token BPE (EOS is <|endoftext|>); batches encode on tiktoken's threads."""

    name = "gpt2"
    learns_from_corpus = False
    trained = False
    reads_file = True

    def __init__(self, mergeable_ranks: dict[bytes, int]) -> None:
        tiktoken = _tiktoken()
        from tiktoken_ext.openai_public import r50k_pat_str

        self.mergeable_ranks = mergeable_ranks
        self.eos_id = len(mergeable_ranks)
        self.eos_token = EOT
        self.encoding = tiktoken.Encoding(
            name="gpt2",
            pat_str=r50k_pat_str,
            mergeable_ranks=mergeable_ranks,
            special_tokens={EOT: self.eos_id},
        )
        self.vocab_size = self.encoding.n_vocab

    @classmethod
    def from_file(cls, path: Path) -> GPT2Tokenizer:
        """Load ranks from a local .tiktoken file (base64 token, rank per line)."""
        tiktoken = _tiktoken()
        if path.is_dir():
            path = path / GPT2_FILE
        if not path.is_file():
            raise DataError(f"tokenizer.path {path} does not exist; {HOW_TO_PROVIDE}")
        try:
            ranks = tiktoken.load.load_tiktoken_bpe(str(path))
        except Exception as err:
            raise DataError(f"{path} is not a .tiktoken ranks file ({err}); {HOW_TO_PROVIDE}") from None
        if not ranks:
            raise DataError(f"{path} holds no BPE ranks; {HOW_TO_PROVIDE}")
        return cls(ranks)

    @classmethod
    def download(cls) -> GPT2Tokenizer:
        """tiktoken's own GPT-2 encoding: fetched on first use, then cached."""
        tiktoken = _tiktoken()
        try:
            encoding = tiktoken.get_encoding("gpt2")
        except Exception as err:
            raise DataError(
                f"tokenizer=gpt2 could not fetch GPT-2's vocabulary ({type(err).__name__}); offline? "
                + HOW_TO_PROVIDE
            ) from None
        return cls(encoding._mergeable_ranks)

    @classmethod
    def build(cls, cfg: TokenizerConfig, corpus: object = None) -> GPT2Tokenizer:
        """From the local `tokenizer.path` file, else tiktoken's own (fetched once into its cache)."""
        return cls.from_file(Path(cfg.path)) if cfg.path else cls.download()

    @classmethod
    def load(cls, directory: Path, meta: dict) -> GPT2Tokenizer:
        return cls.from_file(Path(directory) / meta["file"])

    def to_hf(self) -> HFTokenizer:
        from gptforge.data.hf_tokenizer import byte_level, byte_to_unicode, tiktoken_merges, with_eos

        spell = byte_to_unicode()

        def text(token: bytes) -> str:
            return "".join(spell[b] for b in token)

        vocab = {text(token): rank for token, rank in self.mergeable_ranks.items()}
        merges = [(text(a), text(b)) for a, b in tiktoken_merges(self.mergeable_ranks)]
        # the regex is GPT-2's pre-tokenizer
        return with_eos(byte_level(vocab, merges, use_regex=True), self.eos_token, self.eos_id)

    def encode(self, text: str) -> list[int]:
        return self.encoding.encode_ordinary(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.encoding.encode_ordinary_batch(texts)

    def decode(self, ids: list[int]) -> str:
        return self.encoding.decode(ids)

    def save(self, directory: Path) -> None:
        ranked = sorted(self.mergeable_ranks.items(), key=lambda item: item[1])
        lines = (f"{base64.b64encode(token).decode()} {rank}\n" for token, rank in ranked)
        (Path(directory) / GPT2_FILE).write_text("".join(lines))
        meta = {"name": self.name, "file": GPT2_FILE, "eos_token": EOT}
        (Path(directory) / TOKENIZER_FILE).write_text(json.dumps(meta))
