"""Supervised fine-tuning data: prompt/response examples (JSON Lines or Parquet), learned on responses only.

An example becomes prompt ids + response ids + EOS. The prompt is context: the loss never asks the model
to predict its tokens; the response and the closing EOS are learned. `ExamplePacker` packs examples into
blocks as documents are packed, each token carrying its loss flag, and the loader turns the targets of
unlearned tokens into -100.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

from gptforge.data.sources import DocumentSource, detect_format, open_local, resolve_files
from gptforge.data.tokenizers import Tokenizer
from gptforge.errors import DataError

EXAMPLE_FORMATS = ("json", "parquet")


class Example(NamedTuple):
    """One fine-tuning pair: the prompt (context, no loss) and the response (learned)."""

    prompt: str
    response: str


@dataclass
class ExampleSource(DocumentSource):
    """Prompt/response examples, one per JSON Lines line or Parquet row, read a shard (file) at a time."""

    prompt_field: str = "prompt"
    response_field: str = "response"

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
        fields = ((self.prompt_field, "data.prompt_field"), (self.response_field, "data.response_field"))
        values = []
        for name, key in fields:
            value = batch[name][i] if name in batch else None
            if value is None:
                present = ", ".join(k for k, column in batch.items() if column[i] is not None) or "none"
                where = self.row_location(unit, row)
                raise DataError(f"{where}: no field {name!r} ({key}); its fields: {present}")
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
        return Example(prompt, response)


def open_examples(
    path: str,
    text_format: str,
    prompt_field: str,
    response_field: str,
    encoding_errors: str,
    key: str = "data.path",
) -> ExampleSource:
    """Stream the prompt/response examples of the JSON Lines or Parquet files `path` names."""
    builder = detect_format(resolve_files(path, key), text_format, key)
    if builder not in EXAMPLE_FORMATS:
        raise DataError(
            f"{key}={path} holds {builder} files; data=sft reads JSON Lines or Parquet with "
            f"{prompt_field!r} and {response_field!r} fields, one example per line or row"
        )
    source = open_local(path, builder, response_field, "document", encoding_errors, key)
    return ExampleSource(**vars(source), prompt_field=prompt_field, response_field=response_field)


def encode_examples(tokenizer: Tokenizer, examples: list[Example]) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, response ids) of each example, encoded apart so that they meet at a token boundary."""
    prompts = tokenizer.encode_batch([example.prompt for example in examples])
    responses = tokenizer.encode_batch([example.response for example in examples])
    return list(zip(prompts, responses, strict=True))
