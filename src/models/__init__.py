"""Models: the GPT decoder (GPT-2 and Llama flavours) and sampling."""

from gptforge.models.generation import generate, sample_next
from gptforge.models.gpt import GPT
from gptforge.models.layers import KVCache

__all__ = ["GPT", "KVCache", "generate", "sample_next"]
