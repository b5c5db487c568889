"""The HTTP server: an OpenAI-compatible API over an `Engine`, and a page to try it (FastAPI, `[serve]`).

POST /v1/completions        prompt -> text; streams server-sent events with "stream": true
POST /v1/chat/completions   messages -> reply, in the chat format (models fine-tuned with data=sft)
GET  /v1/models, /health    what is served; whether it is up
GET  /                      a page: type a prompt, watch the text stream in
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from gptforge.data.chat import render_chat
from gptforge.errors import GptforgeError
from gptforge.serve import api
from gptforge.serve.api import ApiError, ChatRequest, CompletionRequest, SamplingRequest
from gptforge.serve.engine import Delta, Engine, Failed, Finished, Sampling
from gptforge.serve.text import prompt_ids

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
ENDPOINTS = "the endpoints are POST /v1/completions, POST /v1/chat/completions, GET /v1/models, /health and /"


def build_app(engine: Engine, model_name: str, chat: bool) -> FastAPI:
    """The app serving `engine` as `model_name`; `chat`: the model was fine-tuned in the chat format.

    The engine's worker starts with the app and stops when it shuts down.
    """

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        engine.start()
        yield
        engine.close()

    app = FastAPI(title="gptforge", lifespan=lifespan, docs_url=None, redoc_url=None)
    service = Service(engine, model_name, chat)
    page = resources.files("gptforge.serve").joinpath("page.html").read_text(encoding="utf-8")

    @app.exception_handler(ApiError)
    async def refused(_: Request, err: ApiError) -> JSONResponse:
        return JSONResponse(err.body, status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        refusal = api.validation_error(list(err.errors()))
        return JSONResponse(refusal.body, status_code=refusal.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        message, code = str(err.detail), None
        if err.status_code in (404, 405):
            code = "not_found" if err.status_code == 404 else "method_not_allowed"
            message = f"{request.method} {request.url.path} is not served here; {ENDPOINTS}"
        return JSONResponse(api.error_body(message, None, code), status_code=err.status_code)

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        return page

    @app.get("/health")
    async def health() -> dict:
        load = {"active": engine.active, "queued": engine.queued, "peak_active": engine.peak_active}
        return {"status": "ok", **service.info(), **load}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "owned_by": "gptforge"}]}

    @app.post("/v1/completions", response_model=None)
    async def completions(body: CompletionRequest) -> JSONResponse | StreamingResponse:
        prompts = [service.encode(text, "prompt") for text in body.prompt]
        return await service.respond(body, prompts, "prompt", chat=False)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: ChatRequest) -> JSONResponse | StreamingResponse:
        if not chat:
            raise ApiError(
                400,
                f"{model_name} was not fine-tuned on prompt/response pairs (data=sft), so it has no chat "
                "format; use /v1/completions",
                "messages",
                "chat_not_supported",
            )
        messages = [message.model_dump() for message in body.messages]
        prompt = service.encode(render_chat(messages, engine.tokenizer.eos_token), "messages")
        return await service.respond(body, [prompt], "messages", chat=True)

    return app


class Service:
    """What the routes share: checks against the model, submitting to the engine, shaping the answer."""

    def __init__(self, engine: Engine, model_name: str, chat: bool) -> None:
        self.engine, self.model_name, self.chat = engine, model_name, chat

    def info(self) -> dict:
        return {"model": self.model_name, "block_size": self.engine.block_size, "chat": self.chat}

    def encode(self, text: str, param: str) -> list[int]:
        try:
            return prompt_ids(self.engine.tokenizer, text)
        except GptforgeError as err:  # e.g. a character a char tokenizer never saw
            raise ApiError(400, f"{param}: {err}", param, "invalid_text") from None

    def sampling(
        self, body: SamplingRequest, prompts: list[list[int]], prompt_param: str, chat: bool
    ) -> Sampling:
        """The request's sampling, after checking its model name and that every prompt fits the context."""
        if body.model is not None and body.model != self.model_name:
            raise ApiError(
                404,
                f"model {body.model!r} is not served here; this server serves {self.model_name!r}",
                "model",
                "model_not_found",
            )
        block_size, longest = self.engine.block_size, max(map(len, prompts))
        newer = getattr(body, "max_completion_tokens", None)  # chat: OpenAI's newer name wins
        asked, param = (newer, "max_completion_tokens") if newer else (body.max_tokens, "max_tokens")
        if longest >= block_size:
            raise ApiError(
                400,
                f"This model's maximum context length is {block_size} tokens, and the {prompt_param} alone "
                f"is {longest}: no room is left to complete it; shorten the {prompt_param}",
                prompt_param,
                "context_length_exceeded",
            )
        room = block_size - longest
        if asked is None:  # chat: the rest of the context; completions: OpenAI's 16, as room allows
            asked = room if chat else min(api.DEFAULT_COMPLETION_TOKENS, room)
        elif asked > room:
            raise ApiError(
                400,
                f"This model's maximum context length is {block_size} tokens, but {longest + asked} were "
                f"requested ({longest} in the {prompt_param} + {asked} in {param}); lower {param} to at most "
                f"{room} or shorten the {prompt_param}",
                param,
                "context_length_exceeded",
            )
        return Sampling(
            max_tokens=asked,
            temperature=body.temperature,
            top_k=body.top_k,
            top_p=None if body.top_p == 1.0 else body.top_p,  # 1.0 keeps every token: skip the sort
            seed=body.seed,
            stop=tuple(body.stop or ()),
        )

    async def respond(
        self, body: SamplingRequest, prompts: list[list[int]], prompt_param: str, chat: bool
    ) -> JSONResponse | StreamingResponse:
        sampling = self.sampling(body, prompts, prompt_param, chat)
        loop, events = asyncio.get_running_loop(), asyncio.Queue()

        def tell(index: int):
            return lambda event: loop.call_soon_threadsafe(events.put_nowait, (index, event))

        requests = []
        for i, prompt in enumerate(prompts):
            for j in range(body.n):
                seed = None if sampling.seed is None else sampling.seed + j
                choice = dataclasses.replace(sampling, seed=seed)
                requests.append(self.engine.submit(prompt, choice, tell(i * body.n + j)))
        answer = Answer(self.model_name, chat, len(requests), sum(map(len, prompts)) * body.n)
        if body.stream:
            include_usage = body.stream_options is not None and body.stream_options.include_usage
            stream = answer.stream(events, requests, include_usage)
            return StreamingResponse(stream, media_type="text/event-stream", headers=SSE_HEADERS)
        try:
            return JSONResponse(await answer.whole(events))
        finally:
            for request in requests:
                request.cancel()


class Answer:
    """The engine's events for one HTTP request's choices, as one response or as a stream of chunks."""

    def __init__(self, model_name: str, chat: bool, n_choices: int, prompt_tokens: int) -> None:
        self.model_name, self.chat, self.n_choices = model_name, chat, n_choices
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = 0
        self.ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def _envelope(self, choices: list[dict], chunk: bool) -> dict:
        return api.envelope(self.chat, self.ident, self.created, self.model_name, choices, chunk)

    async def whole(self, events: asyncio.Queue) -> dict:
        texts, reasons = [[] for _ in range(self.n_choices)], [None] * self.n_choices
        for _ in range(self.n_choices):
            index, event = await self._next_end(events, texts)
            if isinstance(event, Failed):
                raise ApiError(500, event.message, None, "generation_failed")
            reasons[index] = event.reason
            self.completion_tokens += event.completion_tokens
        choices = [
            api.choice(self.chat, i, "".join(texts[i]), reasons[i], delta=False)
            for i in range(self.n_choices)
        ]
        response = self._envelope(choices, chunk=False)
        response["usage"] = api.usage(self.prompt_tokens, self.completion_tokens)
        return response

    @staticmethod
    async def _next_end(events: asyncio.Queue, texts: list[list[str]]) -> tuple[int, Finished | Failed]:
        while True:
            index, event = await events.get()
            if not isinstance(event, Delta):
                return index, event
            texts[index].append(event.text)

    async def stream(self, events: asyncio.Queue, requests: list, include_usage: bool) -> AsyncIterator[str]:
        try:
            if self.chat:  # OpenAI's first chunk names the role
                first = [api.choice(True, i, "", None, delta=True) for i in range(self.n_choices)]
                for entry in first:
                    entry["delta"]["role"] = "assistant"
                yield _sse(self._envelope(first, chunk=True))
            remaining = self.n_choices
            while remaining:
                index, event = await events.get()
                if isinstance(event, Delta):
                    yield _sse(self._envelope([api.choice(self.chat, index, event.text, None, True)], True))
                    continue
                remaining -= 1
                if isinstance(event, Failed):
                    yield _sse(api.error_body(event.message, None, "generation_failed", "server_error"))
                    continue
                self.completion_tokens += event.completion_tokens
                yield _sse(self._envelope([api.choice(self.chat, index, None, event.reason, True)], True))
            if include_usage:
                last = self._envelope([], chunk=True)
                last["usage"] = api.usage(self.prompt_tokens, self.completion_tokens)
                yield _sse(last)
            yield "data: [DONE]\n\n"
        finally:  # finished, or the client went away: nothing more to decode for it
            for request in requests:
                request.cancel()


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"
