"""Text in and out of sampling: prompts to ids, sampled ids to text, streamed without cutting a character.

`scripts/generate.py` and the server share these, so both read a prompt and write a completion alike.
"""

from __future__ import annotations

from collections.abc import Sequence

from gptforge.data.chat import encode_texts
from gptforge.data.tokenizers import Tokenizer


def prompt_ids(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """The ids a completion continues; an empty prompt starts a new document, as training data does
    after EOS. EOS spelled out in the prompt is the EOS token."""
    return encode_texts(tokenizer, [prompt])[0] if prompt else [tokenizer.eos_id]


def completion_text(tokenizer: Tokenizer, ids: list[int], stop_at_eos: bool = True) -> str:
    """The text of sampled ids, cut before the first EOS when `stop_at_eos`."""
    if stop_at_eos and tokenizer.eos_id in ids:
        ids = ids[: ids.index(tokenizer.eos_id)]
    return tokenizer.decode(ids)


class TextStream:
    """The text of a growing list of sampled ids, released only when it is final: never a character cut
    between tokens (byte-level tokenizers), never the start of what may become a stop sequence.

    The text released in pieces equals `completion_text` of the ids, cut before the first stop sequence.
    """

    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.ids: list[int] = []
        self.text = ""  # decoded text of ids[:_read], complete characters only
        self.stopped = False  # a stop sequence appeared: nothing more is released
        self._prefix = 0  # decoding restarts here: a token boundary the text is complete at
        self._read = 0
        self._released = 0  # characters of `text` handed out

    def push(self, token_id: int) -> str:
        """Add one sampled id; returns the text that became final (often '')."""
        self.ids.append(token_id)
        # decoded from a recent boundary, not from the start: the same text, in time linear in the length
        before = self.tokenizer.decode(self.ids[self._prefix : self._read])
        now = self.tokenizer.decode(self.ids[self._prefix :])
        if len(now) > len(before) and not now.endswith("\ufffd"):  # U+FFFD: a character still incomplete
            self.text += now[len(before) :]
            self._prefix, self._read = self._read, len(self.ids)
        return self._release(final=False)

    def finish(self) -> str:
        """The rest of the text once sampling ended, an incomplete last character decoded as U+FFFD."""
        if self._read < len(self.ids):
            before = self.tokenizer.decode(self.ids[self._prefix : self._read])
            self.text += self.tokenizer.decode(self.ids[self._prefix :])[len(before) :]
            self._read = len(self.ids)
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        if self.stopped:
            return ""
        hits = [at for s in self.stop if (at := self.text.find(s, self._released)) >= 0]
        if hits:
            end, self.stopped = min(hits), True
        elif final:
            end = len(self.text)
        else:
            end = len(self.text) - self._held()
        released = self.text[self._released : end]
        self._released = max(self._released, end)
        return released

    def _held(self) -> int:
        """Length of the longest tail of the text that a stop sequence begins with."""
        longest = 0
        for stop in self.stop:
            for size in range(min(len(stop) - 1, len(self.text) - self._released), longest, -1):
                if self.text.endswith(stop[:size]):
                    longest = size
                    break
        return longest
