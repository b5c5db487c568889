"""Text out of sampling: streamed pieces are final, whole characters, and stop before a stop sequence."""

from __future__ import annotations

import pytest

from gptforge.data.tokenizers import ByteTokenizer, CharTokenizer
from gptforge.serve.text import TextStream, completion_text, prompt_ids

BYTES = ByteTokenizer()


def streamed(ids: list[int], stop: tuple[str, ...] = ()) -> tuple[list[str], TextStream]:
    stream = TextStream(BYTES, stop)
    pieces = [stream.push(token) for token in ids]
    return [*pieces, stream.finish()], stream


def test_multi_byte_characters_are_released_whole() -> None:
    text = "né 🙂!"
    pieces, _ = streamed(list(text.encode()))
    assert "".join(pieces) == text
    assert "\ufffd" not in "".join(pieces) and "🙂" in pieces  # its 4 bytes came out as one piece


def test_a_character_cut_by_the_end_is_decoded_as_replacement() -> None:
    ids = list("ok🙂".encode())[:-1]
    pieces, _ = streamed(ids)
    assert "".join(pieces) == completion_text(BYTES, ids) == "ok\ufffd"


@pytest.mark.parametrize(
    ("text", "stop", "expected"),
    [
        ("Hello world. More", ("world",), "Hello "),
        ("Hello world. More", ("xyz", ". M"), "Hello world"),
        ("wor wor world", ("world",), "wor wor "),  # a false start is released once it cannot match
        ("no stop here", ("stop!",), "no stop here"),  # held back at the end, then released
    ],
)
def test_text_ends_before_the_first_stop_sequence(text: str, stop: tuple[str, ...], expected: str) -> None:
    pieces, stream = streamed(list(text.encode()), stop)
    assert "".join(pieces) == expected
    assert stream.stopped == (expected != text)


def test_prompts_and_completions_read_eos_as_generate_does() -> None:
    chars = CharTokenizer(list("ab"))
    assert prompt_ids(chars, "") == [chars.eos_id]  # an empty prompt starts a new document
    assert prompt_ids(chars, "ab<|endoftext|>a") == [0, 1, 2, 0]
    assert completion_text(chars, [0, 2, 1]) == "a"
    assert completion_text(chars, [0, 2, 1], stop_at_eos=False) == "a\nb"
