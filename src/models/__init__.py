"""Models: the GPT decoder (GPT-2 and Llama flavours), sampling, LoRA adapters and HF name mapping."""

from gptforge.models.generation import generate, sample_next
from gptforge.models.gpt import GPT
from gptforge.models.hf import from_hf, to_hf_state_dict
from gptforge.models.layers import KVCache
from gptforge.models.lora import LoRALinear, apply_lora, merge_lora

__all__ = [
    "GPT",
    "KVCache",
    "LoRALinear",
    "apply_lora",
    "from_hf",
    "generate",
    "merge_lora",
    "sample_next",
    "to_hf_state_dict",
]
