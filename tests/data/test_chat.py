"""The chat format: one template for SFT data, the server and transformers, EOS spelled out as EOS."""

from __future__ import annotations

import pytest
import transformers  # a dev dependency: installed by scripts/test.sh

from gptforge.config import DataConfig
from gptforge.data.bpe import BPETokenizer, train_bpe
from gptforge.data.chat import CHAT_TEMPLATE, chat_template, encode_texts, render_chat
from gptforge.data.tokenizers import CharTokenizer

EOS = "<|endoftext|>"
CONVERSATION = [
    {"role": "system", "content": "A play.\n\n"},
    {"role": "user", "content": "ROMEO:\nWhat say you?\n\nJULIET:\n"},
    {"role": "assistant", "content": "Nothing, my lord."},
    {"role": "user", "content": "\n\nROMEO:\nNothing?\n\nJULIET:\n"},
]


def test_a_prompt_response_pair_is_the_one_turn_conversation() -> None:
    prompt, response = "ROMEO:\nSpeak.\n\nJULIET:\n", "I will."
    user = [{"role": "user", "content": prompt}]
    assert render_chat(user, EOS) == prompt  # the generation prompt adds nothing
    assert (
        render_chat([*user, {"role": "assistant", "content": response}], EOS, False)
        == prompt + response + EOS
    )


def test_turns_follow_each_other_and_each_reply_ends_with_eos() -> None:
    expected = "A play.\n\nROMEO:\nWhat say you?\n\nJULIET:\nNothing, my lord." + EOS
    assert render_chat(CONVERSATION, EOS) == expected + "\n\nROMEO:\nNothing?\n\nJULIET:\n"
    with pytest.raises(ValueError, match="role must be system, user or assistant"):
        render_chat([{"role": "tool", "content": "x"}], EOS)


def test_eos_spelled_in_text_encodes_as_the_eos_token() -> None:
    chars = CharTokenizer(sorted(set("abc")), EOS)  # '<' and '|' are not in its alphabet
    assert encode_texts(chars, [f"ab{EOS}c{EOS}", "", EOS]) == [[0, 1, 3, 2, 3], [], [3]]


def test_transformers_renders_and_tokenizes_the_exported_template_alike() -> None:
    corpus = ["ROMEO:\nWhat say you?\n\nJULIET:\nNothing, my lord.\n\n"] * 20
    ours = BPETokenizer(train_bpe(corpus, 300, [EOS]), EOS)
    theirs = transformers.PreTrainedTokenizerFast(
        tokenizer_object=ours.hf_tokenizer, eos_token=EOS, chat_template=CHAT_TEMPLATE
    )
    for messages in (CONVERSATION, CONVERSATION[1:2], CONVERSATION[:3]):
        text = render_chat(messages, EOS)
        assert theirs.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == text
        encoded = theirs.apply_chat_template(messages, add_generation_prompt=True)
        assert encoded["input_ids"] == encode_texts(ours, [text])[0]
    assert chat_template(DataConfig(source="sft")) == CHAT_TEMPLATE
    assert chat_template(DataConfig()) is None  # pretraining data: no turns, no template
