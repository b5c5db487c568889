"""Every command in the README runs as written, on tiny settings.

The README's ```bash and ```python blocks run in order, each command as a user types it, in a scratch copy
of the project whose experiment and model configs are shrunk to a few steps of a tiny model (commands
keep their own overrides). `corpus/` and `held_out.txt`, which the README leaves to the user, are a few
files of the bundled text. What needs GPUs or a cluster (NPROC=8, NNODES, sbatch, GPU experiments) is
composed and validated by the same config schema (`--cfg job`), not run; `./scripts/test.sh` is the
command running this test and is not started again from inside it. Servers are started in the
background, waited for, and stopped at the end.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT
from omegaconf import OmegaConf

pytestmark = pytest.mark.slow

GPU_CLASS = re.compile(
    r"NPROC=([3-9]|\d{2,})|NNODES=|sbatch |experiment=(gpt2_124m|llama_\w+)|model=(gpt2_\d+m|llama_\d+b)"
)
TINY_MODEL = {"n_layer": 2, "n_embd": 32, "n_head": 2}
TINY_TRAINER = {
    "max_steps": 8,
    "eval_every": 4,
    "eval_batches": 2,
    "checkpoint_every": 4,
    "log_every": 2,
    "micro_batch_size": 4,
    "global_batch_size": None,
}


def commands(readme: str) -> list[tuple[str, str]]:
    """(kind, text) of every command: each line (continuations joined) of a bash block, each python block."""
    found = []
    for kind, body in re.findall(r"```(bash|python)\n(.*?)```", readme, re.S):
        if kind == "python":
            found.append(("python", body))
            continue
        for line in body.replace("\\\n", " ").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                found.append(("bash", line.strip()))
    return found


def shrink(scratch: Path) -> None:
    """Tiny models and a few steps in every experiment and model config of the scratch copy."""
    for path in (scratch / "configs" / "model").glob("*.yaml"):
        cfg = OmegaConf.load(path)
        cfg.merge_with(TINY_MODEL | {"block_size": min(cfg.get("block_size", 64), 64)})
        for key, value in (("n_kv_head", 1), ("intermediate_size", 64)):
            if cfg.get(key) is not None:
                cfg[key] = value
        OmegaConf.save(cfg, path)
    for path in (scratch / "configs" / "experiment").glob("*.yaml"):
        text = path.read_text()
        header = "".join(line + "\n" for line in text.splitlines() if line.startswith("# @package"))
        cfg = OmegaConf.load(path)
        cfg.trainer = OmegaConf.merge(cfg.get("trainer", {}), TINY_TRAINER)
        cfg.trainer.sample_tokens = min(cfg.trainer.get("sample_tokens", 0), 20)
        cfg.scheduler = OmegaConf.merge(cfg.get("scheduler", {}), {"warmup_steps": 2})
        if cfg.get("model") is not None and "block_size" in cfg.model:
            cfg.model.block_size = 64
        path.write_text(header + OmegaConf.to_yaml(cfg))


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("readme")
    for name in ("configs", "scripts", "data", "docs"):
        shutil.copytree(ROOT / name, root / name)
    for name in ("launch.sh", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, root / name)
    venv = Path(sys.executable).parents[1]
    if venv == ROOT / ".venv":  # up to date with pyproject.toml, or the README's setup.sh would reinstall
        subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh"), "dev"], check=True, capture_output=True)
    (root / ".venv").symlink_to(venv)  # this environment, already set up
    shrink(root)
    text = (ROOT / "data" / "tinyshakespeare.txt").read_text()
    (root / "corpus").mkdir()
    for i in range(3):
        (root / "corpus" / f"part{i}.txt").write_text(text[i * 60_000 : (i + 1) * 60_000])
    (root / "held_out.txt").write_text(text[-3_000:])
    return root


def compose_only(command: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    """A GPU or cluster command, checked by composing its overrides: launch.sh's or sbatch's arguments."""
    words = shlex.split(command.split("#")[0])
    entry = next(i for i, w in enumerate(words) if w.endswith(("launch.sh", "slurm_train.sbatch")))
    if words[entry].endswith(".sbatch"):
        syntax = subprocess.run(["bash", "-n", words[entry]], cwd=cwd, capture_output=True, text=True)
        assert syntax.returncode == 0, syntax.stderr
    overrides = words[entry + 1 :]
    return subprocess.run(
        [sys.executable, "scripts/train.py", *overrides, "--cfg", "job"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def text_of(output: str | bytes | None) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


def wait_for_server(port: int, process: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return
        except OSError:
            if process.poll() is not None:
                stderr = text_of(process.stderr.read())[-3000:]
                raise AssertionError(f"the server exited with {process.returncode}:\n{stderr}") from None
            time.sleep(0.5)
    raise AssertionError(f"no server on port {port} after {timeout} s")


def test_every_readme_command_runs_as_written(scratch: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # `python` is this one
    servers: list[subprocess.Popen] = []
    ran = []
    try:
        for kind, command in commands((ROOT / "README.md").read_text()):
            started = time.perf_counter()
            if kind == "python":
                result = subprocess.run(
                    [sys.executable, "-c", command], cwd=scratch, env=env, capture_output=True
                )
            elif command.startswith("./scripts/test.sh"):
                continue  # the command that runs this very test
            elif "scripts/serve.py" in command:
                port = int(re.search(r"--port (\d+)", command).group(1)) if "--port" in command else 8000
                server = subprocess.Popen(
                    ["bash", "-c", command.rstrip(" &")],
                    cwd=scratch,
                    env=env,
                    start_new_session=True,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
                servers.append(server)
                wait_for_server(port, server)
                ran.append((command, time.perf_counter() - started))
                continue
            elif GPU_CLASS.search(command) and not command.startswith("DRY_RUN=1"):
                result = compose_only(command, scratch, env)
            else:
                result = subprocess.run(
                    ["bash", "-c", command], cwd=scratch, env=env, capture_output=True, timeout=600
                )
            assert result.returncode == 0, f"{command}\n{text_of(result.stdout)}{text_of(result.stderr)}"[
                -3000:
            ]
            ran.append((command, time.perf_counter() - started))
    finally:
        for command, seconds in ran:  # shown with -s: where the time goes
            print(f"{seconds:6.1f} s  {command[:100]}")
        for server in servers:
            with contextlib.suppress(ProcessLookupError):  # one that failed to start is gone already
                os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
    assert len(ran) > 20  # the README's commands, not an empty parse
