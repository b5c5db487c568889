"""Data: tokenizers, corpora and the loaders that feed packed (input_ids, targets) batches to each rank."""

from gptforge.data.corpus import load_corpus, read_text, to_token_array
from gptforge.data.loader import RandomWindowLoader
from gptforge.data.tokenizers import Tokenizer, build_tokenizer, load_tokenizer

__all__ = [
    "RandomWindowLoader",
    "Tokenizer",
    "build_tokenizer",
    "load_corpus",
    "load_tokenizer",
    "read_text",
    "to_token_array",
]
