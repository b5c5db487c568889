"""The real server (scripts/serve.py on a tiny fine-tuned checkpoint) driven by real HTTP clients: the
`openai` client and httpx, and the web page in headless Chromium."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
from conftest import ROOT, run_script
from fastapi.testclient import TestClient
from headless import CHROMIUM, HeadlessChromium

from gptforge.data.chat import render_chat
from gptforge.data.tokenizers import load_tokenizer
from gptforge.serve.app import build_app
from gptforge.serve.engine import Engine
from gptforge.trainer.checkpoint import load_checkpoint

PROMPT = "ROMEO:\nSpeak.\n\nJULIET:\n"
ROOM = 32 - len(PROMPT)  # tokens left of the tiny model's context: a char tokenizer, one token a character


@dataclass
class Server:
    url: str
    model: str
    run_dir: Path

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def server(sft_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """scripts/serve.py on the tiny chat model, on a free loopback port (it picks one: --port 0)."""
    log = tmp_path_factory.mktemp("server") / "serve.log"
    command = [sys.executable, str(ROOT / "scripts" / "serve.py"), str(sft_run), "--port", "0"]
    with open(log, "w") as out:  # a file, not a pipe: a full pipe would block the server
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=os.environ | {"PYTHONUNBUFFERED": "1"}
        )
    try:
        url = _wait_for_url(process, log)
        yield Server(url, "sft", sft_run)
    finally:
        process.terminate()
        process.wait(timeout=20)


def _wait_for_url(process: subprocess.Popen, log: Path) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = re.search(r"at (http://127\.0\.0\.1:\d+)", log.read_text())
        if found and httpx.get(f"{found[1]}/health").status_code == 200:
            return found[1]
        assert process.poll() is None, log.read_text()
        time.sleep(0.1)
    raise AssertionError(f"the server did not come up:\n{log.read_text()}")


def generated(run_dir: Path, *args: str) -> str:
    """What scripts/generate.py prints for these arguments, without the prompt and the closing newline."""
    result = run_script("generate.py", str(run_dir), "--prompt", PROMPT, *args)
    assert result.returncode == 0 and result.stderr == "", result.stderr  # within the context: no warning
    assert result.stdout.startswith(PROMPT) and result.stdout.endswith("\n")
    return result.stdout[len(PROMPT) : -1]


def test_completions_equal_generate_py_and_streaming_concatenates_to_the_same_text(server: Server) -> None:
    client = server.client()
    greedy = generated(server.run_dir, "--max-new-tokens", str(ROOM), "--temperature", "0")
    sampled = generated(server.run_dir, "--max-new-tokens", str(ROOM), "--top-k", "20", "--seed", "7")
    options = [
        (greedy, {"temperature": 0, "seed": 1}),
        (sampled, {"temperature": 0.8, "seed": 7, "extra_body": {"top_k": 20}}),  # generate.py's defaults
    ]
    for expected, sampling in options:
        answer = client.completions.create(model=server.model, prompt=PROMPT, max_tokens=ROOM, **sampling)
        assert answer.choices[0].text == expected
        assert answer.usage.prompt_tokens == len(PROMPT)
        chunks = list(
            client.completions.create(
                model=server.model, prompt=PROMPT, max_tokens=ROOM, stream=True, **sampling
            )
        )
        assert "".join(chunk.choices[0].text for chunk in chunks) == expected
        assert chunks[-1].choices[0].finish_reason == answer.choices[0].finish_reason
    assert len(chunks) > 2  # text came in pieces


def test_chat_completions_apply_the_chat_format_of_the_fine_tune(server: Server) -> None:
    client = server.client()
    messages = [
        {"role": "user", "content": "ROMEO:\nGo.\n"},
        {"role": "assistant", "content": "Ay."},
        {"role": "user", "content": "\nJULIET:\n"},
    ]
    eos = load_tokenizer(server.run_dir).eos_token
    reply = client.chat.completions.create(model=server.model, messages=messages, max_tokens=5, temperature=0)
    prompt = render_chat(messages, eos)  # the earlier reply ends with EOS, encoded as the EOS token
    completion = client.completions.create(model=server.model, prompt=prompt, max_tokens=5, temperature=0)
    assert reply.choices[0].message.content == completion.choices[0].text
    assert reply.choices[0].message.role == "assistant"
    assert reply.usage.prompt_tokens == completion.usage.prompt_tokens == len(prompt) - len(eos) + 1
    chunks = list(
        client.chat.completions.create(
            model=server.model, messages=messages, max_tokens=5, temperature=0, stream=True
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == reply.choices[0].message.content
    # without max_tokens a chat reply may use the rest of the context
    rest = client.chat.completions.create(
        model=server.model, messages=messages[:1], temperature=0, stop=["\n\n"]
    )
    assert rest.usage.total_tokens <= 32


def test_eight_concurrent_clients_each_get_their_own_answer(server: Server) -> None:
    requests = [
        {
            "prompt": prompt,
            "max_tokens": ROOM,
            "temperature": temperature,
            "seed": seed,
            "stream": seed % 2 == 0,
        }
        for seed, (prompt, temperature) in enumerate(
            [(PROMPT, 0), ("ROMEO:\n", 0), ("First Citizen:\n", 0), ("KING:", 1.0)] * 2
        )
    ]

    def ask(body: dict) -> str:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            if not body["stream"]:
                response = http.post("/v1/completions", json=body)
                assert response.status_code == 200, response.text
                return response.json()["choices"][0]["text"]
            with http.stream("POST", "/v1/completions", json=body) as response:
                assert response.status_code == 200
                lines = [line for line in response.iter_lines() if line]
            assert lines[-1] == "data: [DONE]"
            return "".join(json.loads(line[6:])["choices"][0]["text"] for line in lines[:-1])

    alone = [ask(body) for body in requests]
    with ThreadPoolExecutor(len(requests)) as pool:
        together = list(pool.map(ask, requests))
    assert together == alone
    assert httpx.get(f"{server.url}/health").json()["peak_active"] >= 2  # decoded together (8 here)
    assert alone[3] != alone[7]  # the same prompt sampled under seeds 3 and 7


def test_several_prompts_and_choices_come_back_in_order_with_their_seeds(server: Server) -> None:
    client = server.client()
    prompts, options = ["ROMEO:", "KING:"], {"max_tokens": 8, "temperature": 1.0, "seed": 5}
    answer = client.completions.create(model=server.model, prompt=prompts, n=2, **options)
    assert [c.index for c in answer.choices] == [0, 1, 2, 3]
    for i, prompt in enumerate(prompts):
        for j in range(2):  # choice j samples with seed + j
            alone = client.completions.create(model=server.model, prompt=prompt, **options | {"seed": 5 + j})
            assert answer.choices[2 * i + j].text == alone.choices[0].text
    assert answer.usage.prompt_tokens == 2 * (6 + 5)
    chunks = list(
        client.completions.create(
            model=server.model,
            prompt=prompts,
            n=2,
            stream=True,
            stream_options={"include_usage": True},
            **options,
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == answer.usage.total_tokens
    for index, choice in enumerate(answer.choices):
        assert "".join(c.choices[0].text for c in chunks[:-1] if c.choices[0].index == index) == choice.text


BAD_REQUESTS = [
    # (path, body: JSON text, status, the field the error names, its code)
    ("/v1/completions", '{"prompt": "ROMEO:", "max_tokens": ', 400, None, "invalid_json"),
    ("/v1/completions", '{"prompt": "ROMEO:", "max_token": 5}', 400, "max_token", "unknown_field"),
    ("/v1/completions", '{"prompt": "ROMEO:", "max_tokens": -3}', 400, "max_tokens", "invalid_value"),
    (
        "/v1/completions",
        '{"prompt": "ROMEO:", "max_tokens": 30}',
        400,
        "max_tokens",
        "context_length_exceeded",
    ),
    ("/v1/completions", json.dumps({"prompt": "x" * 40}), 400, "prompt", "context_length_exceeded"),
    ("/v1/completions", '{"max_tokens": 5}', 400, "prompt", "missing_field"),
    ("/v1/completions", '{"prompt": "caf\\u00e9"}', 400, "prompt", "invalid_text"),
    ("/v1/completions", '{"prompt": "a", "temperature": 3}', 400, "temperature", "invalid_value"),
    ("/v1/completions", '{"prompt": "a", "stop": ["a", "b", "c", "d", "e"]}', 400, "stop", "invalid_value"),
    ("/v1/completions", '{"prompt": "a", "model": "gpt-4"}', 404, "model", "model_not_found"),
    ("/v1/completions", "[1, 2]", 400, None, "invalid_body"),
    (
        "/v1/chat/completions",
        '{"messages": [{"role": "robot", "content": "hi"}]}',
        400,
        "messages.0.role",
        "invalid_value",
    ),
    ("/v1/chat/completions", '{"messages": []}', 400, "messages", "invalid_value"),
    ("/v1/embeddings", '{"input": "a"}', 404, None, "not_found"),
]


def test_bad_requests_get_a_4xx_naming_the_field_and_the_server_serves_on(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as http:
        for path, body, status, param, code in BAD_REQUESTS:
            response = http.post(path, content=body, headers={"Content-Type": "application/json"})
            error = response.json()["error"]
            assert (response.status_code, error["param"], error["code"]) == (status, param, code), error
            assert error["type"] == "invalid_request_error"
            assert param is None or param in error["message"]
        assert http.get("/health").json()["status"] == "ok"
        good = http.post("/v1/completions", json={"prompt": "ROMEO:", "max_tokens": 3, "temperature": 0})
        assert good.status_code == 200 and good.json()["usage"]["completion_tokens"] <= 3


def test_a_base_model_has_no_chat_format(sft_run: Path) -> None:
    loaded = load_checkpoint(sft_run)
    app = build_app(Engine(loaded.model, loaded.tokenizer), "base", chat=False)
    with TestClient(app) as http:
        response = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
        assert response.status_code == 400 and response.json()["error"]["code"] == "chat_not_supported"
        assert "/v1/completions" in response.json()["error"]["message"]
        assert http.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2}).status_code == 200


def dark_pixels(screenshot: Path, box: dict) -> int:
    """Pixels near black inside a CSS box of the page: the completion's text (the prompt is grey)."""
    from PIL import Image

    image = Image.open(screenshot).convert("L")
    region = image.crop(
        (int(box["x"]), int(box["y"]), int(box["x"] + box["width"]), int(box["y"] + box["height"]))
    )
    return sum(region.histogram()[:80])


@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian's chromium is not installed: apt-get install -y chromium"
)
def test_the_web_page_streams_the_completion_in_headless_chromium(server: Server, tmp_path: Path) -> None:
    expected = server.client().completions.create(
        prompt=PROMPT, model=server.model, max_tokens=ROOM, temperature=0
    )
    expected = expected.choices[0].text
    assert expected.strip()  # visible text to look for
    with HeadlessChromium(f"{server.url}/", tmp_path / "profile") as page:
        page.wait_for("document.getElementById('model')?.textContent.startsWith('sft')")  # loaded
        box = page.evaluate("document.getElementById('output').getBoundingClientRect().toJSON()")
        before = dark_pixels(page.screenshot(tmp_path / "before.png"), box)
        page.evaluate(
            f"document.getElementById('prompt').value = {json.dumps(PROMPT)};"
            f"document.getElementById('max-tokens').value = '{ROOM}';"
            "document.getElementById('temperature').value = '0';"
            "document.getElementById('send').click()"
        )
        page.wait_for("document.getElementById('output').dataset.state === 'done'")
        shown = page.evaluate("document.getElementById('completion').textContent")
        chunks = int(page.evaluate("document.getElementById('output').dataset.chunks"))
        box = page.evaluate("document.getElementById('output').getBoundingClientRect().toJSON()")
        after = dark_pixels(page.screenshot(tmp_path / "after.png"), box)
    assert shown == expected and chunks > 2  # the text arrived in pieces and was appended as it came
    assert before == 0 and after > 50, (before, after)
