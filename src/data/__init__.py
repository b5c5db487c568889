"""Data: tokenizers, sources, packing and the loaders that feed (input_ids, targets) batches to each rank."""

from gptforge.data.corpus import load_corpus, read_text, to_token_array
from gptforge.data.loader import StreamingLoader
from gptforge.data.pipeline import BatchLayout, build_data, build_data_tokenizer
from gptforge.data.tokenizers import Tokenizer, build_tokenizer, load_tokenizer
from gptforge.data.windows import RandomWindowLoader

__all__ = [
    "BatchLayout",
    "RandomWindowLoader",
    "StreamingLoader",
    "Tokenizer",
    "build_data",
    "build_data_tokenizer",
    "build_tokenizer",
    "load_corpus",
    "load_tokenizer",
    "read_text",
    "to_token_array",
]
