"""The OpenAI shapes the server speaks: requests (validated strictly), responses, stream chunks, errors.

Requests accept OpenAI's fields for what gptforge does (plus `top_k`, as vLLM does); any other field is
refused by name rather than silently ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default max_tokens for /v1/completions


class ApiError(Exception):
    """A request the server refuses: HTTP status and OpenAI's error object."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = error_body(
            message, param, code, "invalid_request_error" if status < 500 else "server_error"
        )


def error_body(
    message: str, param: str | None, code: str | None, kind: str = "invalid_request_error"
) -> dict:
    """OpenAI's error object: {"error": {"message", "type", "param", "code"}}."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _listed(value: Any) -> Any:
    """A string is a list of one; anything else but a list is refused in words both shapes fit."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise ValueError("must be a string or a list of strings")
    return value


Text = Annotated[str, StringConstraints(min_length=1)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(Strict):
    include_usage: bool = False  # a last chunk with the token counts


class SamplingRequest(Strict):
    """The fields completions and chat completions share."""

    model: str | None = None  # this server's model name, or left out
    max_tokens: int | None = Field(default=None, ge=1)  # new tokens at most
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)  # 0 is greedy
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=1)
    stop: Annotated[list[Text], BeforeValidator(_listed), Field(max_length=4)] | None = None
    seed: int | None = None  # choice i samples with seed + i: the same request gives the same text
    n: int = Field(default=1, ge=1, le=16)  # choices per prompt
    stream: bool = False  # server-sent events, then data: [DONE]
    stream_options: StreamOptions | None = None
    user: str | None = None  # accepted and unused, as an end-user id for logs would be


class CompletionRequest(SamplingRequest):
    prompt: Annotated[list[str], BeforeValidator(_listed), Field(min_length=1)]


class ChatMessage(Strict):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)  # OpenAI's newer name for max_tokens


def validation_error(errors: list[dict]) -> ApiError:
    """The first problem pydantic found in a request body, as a 400 naming the field."""
    first = errors[0]
    kind = first["type"]
    loc = [str(part) for part in first["loc"] if part != "body"]
    param = ".".join(loc) or None
    if kind == "json_invalid":
        detail = first.get("ctx", {}).get("error", "JSON decode error")
        return ApiError(400, f"the request body is not valid JSON ({detail})", None, "invalid_json")
    if param is None:
        return ApiError(400, "the request body must be a JSON object of request fields", None, "invalid_body")
    if kind == "extra_forbidden":
        return ApiError(400, f"Unrecognized request argument supplied: {param}", param, "unknown_field")
    if kind == "missing":
        return ApiError(400, f"{param} is required", param, "missing_field")
    message = first["msg"].removeprefix("Value error, ")
    return ApiError(400, f"{param}: {message}; got {first.get('input')!r}", param, "invalid_value")


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def choice(chat: bool, index: int, text: str | None, finish_reason: str | None, delta: bool) -> dict:
    """One entry of `choices`: text (completions) or a message / delta (chat)."""
    entry: dict = {"index": index, "logprobs": None, "finish_reason": finish_reason}
    if not chat:
        entry["text"] = text or ""
    elif delta:
        entry["delta"] = {} if text is None else {"content": text}
    else:
        entry["message"] = {"role": "assistant", "content": text}
    return entry


def envelope(chat: bool, ident: str, created: int, model: str, choices: list[dict], chunk: bool) -> dict:
    """A response or stream chunk around its choices, as OpenAI names each kind."""
    kind = ("chat.completion.chunk" if chunk else "chat.completion") if chat else "text_completion"
    return {"id": ident, "object": kind, "created": created, "model": model, "choices": choices}
