"""The serving engine: one worker thread owns the model and decodes every request in flight as one batch.

Requests join the batch at the next step (their prompts prefilled together) and leave it as they finish,
so a short request never waits for a long one. Each request samples with its own settings and its own
seeded generator, and hears of its text through its own callback: batch companions change neither.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from gptforge.data.tokenizers import Tokenizer
from gptforge.models import GPT, sample_next
from gptforge.serve.batch import DecodeBatch
from gptforge.serve.text import TextStream


@dataclass(frozen=True)
class Sampling:
    """How one completion is sampled: up to `max_tokens` new tokens, temperature 0 is greedy."""

    max_tokens: int
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None  # None: a fresh random seed
    stop: tuple[str, ...] = ()  # text that ends the completion; it is not part of the text


@dataclass(frozen=True)
class Delta:
    """More text of a completion, final (never revised)."""

    text: str


@dataclass(frozen=True)
class Finished:
    """The completion ended: `reason` is "stop" (EOS or a stop sequence) or "length" (max_tokens)."""

    reason: str
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Failed:
    """The completion could not go on (the model raised); the engine keeps serving others."""

    message: str


Event = Delta | Finished | Failed


@dataclass(eq=False)
class Request:
    """One completion in the engine: its prompt, sampling, callback and progress."""

    prompt: list[int]
    sampling: Sampling
    on_event: Callable[[Event], None]
    stream: TextStream
    generator: torch.Generator
    generated: int = 0
    last_token: int = 0
    done: bool = False
    cancelled: bool = field(default=False, repr=False)

    def cancel(self) -> None:
        """Stop decoding this request at the next step (its client went away); no more events."""
        self.cancelled = True


class Engine:
    """Decodes submitted requests in batches of up to `max_batch_size` on the model's device."""

    def __init__(
        self,
        model: GPT,
        tokenizer: Tokenizer,
        max_batch_size: int = 16,
        autocast_dtype: torch.dtype | None = None,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.block_size = model.cfg.block_size
        self.device = model.lm_head.weight.device
        self.max_batch_size = max_batch_size
        self.autocast_dtype = autocast_dtype
        self.active = 0  # requests in the batch now
        self.peak_active = 0  # the most requests decoded together so far
        self._pending: queue.Queue[Request | None] = queue.Queue()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="gptforge-engine", daemon=True)

    @property
    def queued(self) -> int:
        """Requests waiting for room in the batch."""
        return self._pending.qsize()

    def start(self) -> Engine:
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop the worker after its current step; requests still in flight hear nothing more."""
        self._closed = True
        self._pending.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def submit(self, prompt: list[int], sampling: Sampling, on_event: Callable[[Event], None]) -> Request:
        """Queue a completion of `prompt` ids; `on_event` hears its Delta/Finished/Failed events, called
        on the engine's thread (keep it short)."""
        if not prompt or len(prompt) + sampling.max_tokens > self.block_size:
            raise ValueError(
                f"{len(prompt)} prompt + {sampling.max_tokens} new tokens do not fit "
                f"model.block_size={self.block_size} (and the prompt needs a token)"
            )
        seed = sampling.seed if sampling.seed is not None else int.from_bytes(os.urandom(8), "little")
        request = Request(
            prompt=list(prompt),
            sampling=sampling,
            on_event=on_event,
            stream=TextStream(self.tokenizer, sampling.stop),
            generator=torch.Generator(device=self.device).manual_seed(seed),
        )
        self._pending.put(request)
        return request

    def _run(self) -> None:
        dtype = self.autocast_dtype
        autocast = torch.autocast(self.device.type, dtype=dtype) if dtype else contextlib.nullcontext()
        batch, rows = DecodeBatch(self.model), []
        with torch.inference_mode(), autocast:
            while not self._closed:
                new = self._take(block=not rows, room=self.max_batch_size - len(rows))
                if self._closed:
                    return
                rows += new
                self.peak_active = max(self.peak_active, len(rows))
                try:
                    if new:
                        self._advance(new, batch.add([request.prompt for request in new]))
                        rows = self._drop_done(batch, rows)
                    if rows:
                        self._advance(rows, batch.step([request.last_token for request in rows]))
                        rows = self._drop_done(batch, rows)
                except Exception as err:  # the model raised (e.g. out of memory): fail these, serve on
                    message = f"generation failed: {type(err).__name__}: {err}"
                    for request in rows:
                        if not request.done:
                            self._emit(request, Failed(message))
                    batch, rows = DecodeBatch(self.model), []
                self.active = len(rows)

    def _take(self, block: bool, room: int) -> list[Request]:
        """Waiting requests for the free rows; blocks for the first one when the batch is empty."""
        taken: list[Request] = []
        while len(taken) < room:
            try:
                request = self._pending.get(block=block and not taken)
            except queue.Empty:
                break
            if request is None:  # close()
                break
            if not request.cancelled:
                taken.append(request)
        return taken

    def _advance(self, rows: list[Request], logits: torch.Tensor) -> None:
        """Sample each row's next token with its own settings, and tell its client the text it makes."""
        picks = [
            sample_next(
                logits[i : i + 1], r.sampling.temperature, r.sampling.top_k, r.sampling.top_p, r.generator
            )
            for i, r in enumerate(rows)
        ]
        for request, token in zip(rows, torch.cat(picks).view(-1).tolist(), strict=True):
            if request.cancelled:
                request.done = True
                continue
            request.generated += 1
            request.last_token = token
            if token == self.tokenizer.eos_id:
                self._finish(request, "stop", request.stream.finish())
                continue
            text = request.stream.push(token)
            if request.stream.stopped:
                self._finish(request, "stop", text)
            elif request.generated == request.sampling.max_tokens:
                self._finish(request, "length", text + request.stream.finish())
            elif text:
                self._emit(request, Delta(text))

    def _finish(self, request: Request, reason: str, text: str) -> None:
        if text:
            self._emit(request, Delta(text))
        self._emit(request, Finished(reason, len(request.prompt), request.generated))
        request.done = True

    def _emit(self, request: Request, event: Event) -> None:
        try:
            request.on_event(event)
        except Exception:  # a client that cannot be told any more is a client gone
            request.cancelled = True

    @staticmethod
    def _drop_done(batch: DecodeBatch, rows: list[Request]) -> list[Request]:
        kept = [i for i, request in enumerate(rows) if not request.done]
        if len(kept) < len(rows):
            batch.keep(kept)
        return [rows[i] for i in kept]
