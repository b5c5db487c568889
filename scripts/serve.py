"""Serve a checkpoint over HTTP: an OpenAI-compatible API, and a web page at / to try it.

    python scripts/serve.py runs/shakespeare_char_cpu                 # http://127.0.0.1:8000
    curl -s http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \\
        -d '{"prompt": "ROMEO:", "max_tokens": 40, "temperature": 0}'

The argument may be a step_<N> dir, a checkpoints/ folder or a run directory (its newest valid checkpoint),
of any strategy; LoRA adapters are merged in. Endpoints: POST /v1/completions, POST /v1/chat/completions
(models fine-tuned with data=sft, in their chat format), GET /v1/models, GET /health, GET /. Requests in
flight are decoded together on the device; prompt + max_tokens must fit model.block_size. On CUDA the
forward runs under bf16 autocast where supported. Needs the [serve] extra: pip install -e .[serve].
"""

from __future__ import annotations

import argparse
import errno
import socket
from pathlib import Path

from gptforge.cli import run_cli
from gptforge.data.chat import chat_template
from gptforge.errors import ConfigError
from gptforge.models import merge_lora
from gptforge.serve.engine import Engine
from gptforge.trainer.checkpoint import load_checkpoint
from gptforge.trainer.devices import resolve_device, resolve_precision


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("checkpoint", type=Path, help="a step_<N> dir, checkpoints/ folder or run dir")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every one)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on; 0 picks a free one")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--max-batch-size", type=int, default=16, help="requests decoded together")
    parser.add_argument("--name", default=None, help="model name in the API (default: the run's name)")
    args = parser.parse_args(argv)
    if args.max_batch_size < 1 or not 0 <= args.port <= 65535:
        raise ConfigError(
            f"--max-batch-size={args.max_batch_size} must be >= 1, --port={args.port} in 0..65535"
        )
    return args


def listen(host: str, port: int) -> socket.socket:
    """A listening socket, so that a port in use fails now, in one line, before the model loads."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"--port {port}: {host}:{port} is already in use; stop what listens there or choose "
                "another --port (0 picks a free one)"
            ) from None
        raise ConfigError(f"--host {host} --port {port}: cannot listen there ({err.strerror})") from None
    return sock


def run_name(directory: Path) -> str:
    """The name of the run a checkpoint belongs to: <run>/checkpoints/step_<N> -> <run>."""
    return directory.parents[1].name if directory.parent.name == "checkpoints" else directory.name


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        import uvicorn

        from gptforge.serve.app import build_app
    except ImportError as err:
        raise ConfigError(
            f"scripts/serve.py needs the [serve] extra ({err.name} is not installed): pip install -e .[serve]"
        ) from None
    sock = listen(args.host, args.port)
    device = resolve_device(args.device)
    loaded = load_checkpoint(args.checkpoint, device)
    engine = Engine(
        merge_lora(loaded.model), loaded.tokenizer, args.max_batch_size, resolve_precision("auto", device)
    )
    name = args.name or run_name(loaded.directory)
    app = build_app(engine, name, chat=chat_template(loaded.cfg.data) is not None)
    host, port = sock.getsockname()[:2]
    url = f"http://[{host}]:{port}" if sock.family == socket.AF_INET6 else f"http://{host}:{port}"
    print(f"gptforge serve: {name} ({loaded.directory}) on {device} at {url}", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="info")).run(sockets=[sock])


if __name__ == "__main__":
    run_cli(main)
