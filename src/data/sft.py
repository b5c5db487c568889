"""Supervised fine-tuning data: prompt/response pairs or conversations (JSON Lines or Parquet), learned on
the replies only.

An example is a conversation and its reply: a prompt/response pair is the one-turn conversation [user:
prompt], a `messages` list is the turns before its last (assistant) message. The conversation is rendered
by the chat format (`gptforge.data.chat`) into the prompt, so the example becomes prompt ids + response
ids + EOS. The prompt is context: the loss never asks the model to predict its tokens; the response and
the closing EOS are learned. `ExamplePacker` packs examples into blocks as documents are packed, each
token carrying its loss flag, and the loader turns the targets of unlearned tokens into -100.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

from gptforge.data.chat import Message, conversation_problem, encode_texts, render_chat
from gptforge.data.sources import DocumentSource, TextOptions, detect_format, open_local, resolve_files
from gptforge.data.tokenizers import Tokenizer
from gptforge.errors import DataError

EXAMPLE_FORMATS = ("json", "parquet")


class Example(NamedTuple):
    """One fine-tuning example: the conversation so far (context, no loss) and the reply (learned)."""

    messages: tuple[Message, ...]
    response: str

    @classmethod
    def pair(cls, prompt: str, response: str) -> Example:
        """A prompt/response pair: the one-turn conversation [user: prompt] and its reply."""
        return cls(({"role": "user", "content": prompt},), response)

    @property
    def text(self) -> str:
        """Every character the example holds (a char tokenizer's alphabet comes from these)."""
        return "".join(message["content"] for message in self.messages) + self.response


@dataclass
class ExampleSource(DocumentSource):
    """Fine-tuning examples, one per JSON Lines line or Parquet row, read a shard (file) at a time: a
    prompt/response pair, or a list of messages when `messages_field` is set."""

    prompt_field: str = "prompt"
    response_field: str = "response"
    messages_field: str | None = None

    def documents(self, unit: int, skip: int = 0) -> Iterator[Example]:
        """The examples of shard `unit` from its `skip`-th on; a missing field or empty response fails."""
        row = skip
        for batch in self.batches(unit, skip):
            n_rows = len(next(iter(batch.values())))
            for i in range(n_rows):
                yield self._example(batch, i, unit, row + i)
            row += n_rows

    def _example(self, batch: dict, i: int, unit: int, row: int) -> Example:
        """Row `i` of `batch` (row `row` of the shard), or a DataError naming file, line and field."""
        if self.messages_field is not None:
            messages = self._field(batch, i, unit, row, self.messages_field, "data.messages_field")
            problem = conversation_problem(messages)
            if problem:
                raise DataError(f"{self.row_location(unit, row)}: field {self.messages_field!r} {problem}")
            turns = tuple({"role": m["role"], "content": m["content"]} for m in messages)
            return Example(turns[:-1], turns[-1]["content"])
        fields = ((self.prompt_field, "data.prompt_field"), (self.response_field, "data.response_field"))
        values = []
        for name, key in fields:
            value = self._field(batch, i, unit, row, name, key)
            if not isinstance(value, str):
                kind = type(value).__name__
                raise DataError(f"{self.row_location(unit, row)}: field {name!r} holds {kind}, not text")
            values.append(value)
        prompt, response = values
        if not response.strip():
            raise DataError(
                f"{self.row_location(unit, row)}: field {self.response_field!r} is empty; "
                "every example needs a response to learn from"
            )
        return Example.pair(prompt, response)

    def _field(self, batch: dict, i: int, unit: int, row: int, name: str, key: str) -> object:
        value = batch[name][i] if name in batch else None
        if value is None:
            present = ", ".join(k for k, column in batch.items() if column[i] is not None) or "none"
            raise DataError(
                f"{self.row_location(unit, row)}: no field {name!r} ({key}); its fields: {present}"
            )
        return value


def open_examples(
    path: str,
    text_format: str,
    prompt_field: str,
    response_field: str,
    encoding_errors: str,
    key: str = "data.path",
    messages_field: str | None = None,
) -> ExampleSource:
    """Stream the examples of the JSON Lines or Parquet files `path` names."""
    builder = detect_format(resolve_files(path, key), text_format, key)
    if builder not in EXAMPLE_FORMATS:
        fields = (
            f"a {messages_field!r} field" if messages_field else f"{prompt_field!r} and {response_field!r}"
        )
        raise DataError(
            f"{key}={path} holds {builder} files; data=sft reads JSON Lines or Parquet with "
            f"{fields} fields, one example per line or row"
        )
    options = TextOptions(builder, response_field, "document", encoding_errors)
    source = open_local(path, options, key)
    return ExampleSource(
        **vars(source),
        prompt_field=prompt_field,
        response_field=response_field,
        messages_field=messages_field,
    )


def encode_examples(tokenizer: Tokenizer, examples: list[Example]) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, response ids) of each example: its conversation rendered by the chat format, and its
    reply, encoded apart so that they meet at a token boundary."""
    prompts = [render_chat(example.messages, tokenizer.eos_token) for example in examples]
    responses = [example.response for example in examples]
    return list(zip(encode_texts(tokenizer, prompts), encode_texts(tokenizer, responses), strict=True))
