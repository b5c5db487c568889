"""The chat format: how a conversation of OpenAI-style messages becomes the text a fine-tuned model reads.

One definition, `CHAT_TEMPLATE`, a Jinja template in Hugging Face's `chat_template` convention: SFT data
is rendered by it, the server applies it, and `export_hf.py` writes it into tokenizer_config.json, so
`AutoTokenizer.apply_chat_template(messages, add_generation_prompt=True)` gives the same prompt.

The format is the one SFT has always trained on, prompt + response + EOS, grown to several turns: a
conversation is its messages' contents in order, each assistant message closed by EOS, and the reply
follows the last message directly (the generation prompt adds nothing). A prompt/response pair is the
one-turn conversation [user: prompt, assistant: response]. Roles add no text of their own: framing such as
a speaker's name is part of the contents, as in data/sft_example.jsonl.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from gptforge.config import DataConfig
from gptforge.data.tokenizers import Tokenizer

ROLES = ("system", "user", "assistant")

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{- raise_exception('a message role must be system, user or assistant') -}}"
    "{%- endif -%}"
    "{{- message['content'] -}}"
    "{%- if message['role'] == 'assistant' -%}{{- eos_token -}}{%- endif -%}"
    "{%- endfor -%}"
)

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": text}


def _raise(message: str) -> None:
    raise ValueError(message)


@functools.cache
def _template():
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    # the environment transformers renders chat templates in
    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    environment.globals["raise_exception"] = _raise
    return environment.from_string(CHAT_TEMPLATE)


def render_chat(messages: Sequence[Message], eos_token: str, add_generation_prompt: bool = True) -> str:
    """The text of a conversation in the chat format; with the generation prompt, what a reply continues."""
    return _template().render(
        messages=list(messages), eos_token=eos_token, add_generation_prompt=add_generation_prompt
    )


def conversation_problem(messages: object) -> str | None:
    """What keeps `messages` from being a conversation to learn from (its last message is the assistant's
    reply), or None."""
    if not isinstance(messages, list) or not messages:
        return "must be a non-empty list of {role, content} messages"
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            return f"message {i} needs a role of {', '.join(ROLES)}"
        if not isinstance(message.get("content"), str):
            return f"message {i} needs text content"
    if messages[-1]["role"] != "assistant" or not messages[-1]["content"].strip():
        return "must end with an assistant message that has text: the reply to learn"
    return None


def encode_texts(tokenizer: Tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, where the EOS token's spelling stands for EOS (as HF tokenizers read a
    special token); the text between is encoded as ever."""
    pieces = [text.split(tokenizer.eos_token) for text in texts]
    encoded = iter(tokenizer.encode_batch([piece for parts in pieces for piece in parts]))
    ids = []
    for parts in pieces:
        row = next(encoded)
        for _ in parts[1:]:
            row = [*row, tokenizer.eos_id, *next(encoded)]
        ids.append(row)
    return ids


def chat_template(data: DataConfig) -> str | None:
    """The chat template of a model trained on `data`: the chat format after fine-tuning (data=sft),
    None after pretraining, whose documents follow no turns."""
    from gptforge.data.pipeline import DATA_SOURCES

    return CHAT_TEMPLATE if DATA_SOURCES[data.source].fine_tunes else None
