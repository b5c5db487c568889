"""Shared test helpers: configs composed through Hydra exactly as `scripts/train.py` composes them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gptforge.compose import CONFIG_DIR, compose  # noqa: F401 - CONFIG_DIR for the tests
from gptforge.config import Config, register_configs

ROOT = Path(__file__).resolve().parents[1]

register_configs()

# a run small enough for a unit test: seconds on one CPU core
TINY = [
    "experiment=smoke",
    "model.n_layer=2",
    "model.n_head=2",
    "model.n_embd=32",
    "model.block_size=32",
    "trainer.micro_batch_size=4",
    "trainer.eval_batches=2",
    "logger.console.progress_bar=false",
]


def compose_config(overrides: list[str] | None = None) -> Config:
    """The validated `Config` that `scripts/train.py <overrides>` would run."""
    return compose(overrides)


def run_script(script: str, *args: str, cwd: Path = ROOT, env: dict | None = None, timeout: float = 600):
    """Run `scripts/<script>` in a fresh interpreter, as a user would; returns the CompletedProcess."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / script), *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def tiny_config(tmp_path: Path):
    """A factory for tiny validated configs writing into a fresh run directory."""

    def make(*overrides: str) -> Config:
        return compose_config([*TINY, f"out_dir={tmp_path / 'run'}", *overrides])

    return make


@pytest.fixture(scope="session")
def sft_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A chat model: the TINY model pretrained for a few steps, then fine-tuned on data/sft_example.jsonl."""
    from gptforge.trainer import train

    root = tmp_path_factory.mktemp("sft_run")
    few = ["trainer.max_steps=8", "scheduler.warmup_steps=2", "trainer.eval_every=0"]
    corpus = f"data.path={ROOT / 'data' / 'tinyshakespeare.txt'}"
    train(compose_config([*TINY, *few, corpus, f"out_dir={root / 'pretrain'}"]))
    model = [override for override in TINY if not override.startswith("experiment=")]
    examples = f"data.path={ROOT / 'data' / 'sft_example.jsonl'}"
    init_from = f"trainer.init_from={root / 'pretrain'}"
    train(compose_config(["experiment=sft", *model, *few, examples, init_from, f"out_dir={root / 'sft'}"]))
    return root / "sft"


def write_next_line_task(directory: Path, examples: int = 200, seed: int = 0) -> Path:
    """A multiple-choice task from held-out Shakespeare: after a line, the true next line or one of three
    copies of it with the words shuffled (chance: 25%). Writes next_line.jsonl and the task YAML; returns
    the YAML's path."""
    import itertools
    import json
    import random

    text = (ROOT / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    lines = text[int(len(text) * 0.91) :].split("\n")  # inside the last 10%: the runs' validation split
    rng = random.Random(seed)
    rows = []
    for previous, line in itertools.pairwise(lines):
        words = line.split()
        if not previous.strip() or len(words) < 4 or len(line) > 30:
            continue
        choices = [line]
        for _ in range(100):  # three distinct shuffles, none the true line
            shuffled = " ".join(rng.sample(words, len(words)))
            if shuffled not in choices:
                choices.append(shuffled)
            if len(choices) == 4:
                break
        if len(choices) < 4:
            continue
        rng.shuffle(choices)
        rows.append({"context": previous + "\n", "choices": choices, "gold": choices.index(line)})
        if len(rows) == examples:
            break
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "next_line.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    task = directory / "next_line.yaml"
    task.write_text(NEXT_LINE_YAML)
    return task


NEXT_LINE_YAML = """\
# Which line comes next? After a line of held-out tiny Shakespeare (from 91% of the text on: the
# shakespeare_char data holds out the last 10%), the true next line or one of three copies of it with
# its words shuffled; chance is 25%. Written by write_next_line_task in tests/conftest.py.
name: next_line
path: next_line.jsonl
target_delimiter: ""  # the line follows the context's newline directly
"""


@pytest.fixture
def one_torch_thread():
    """Tiny models run several times faster on one thread than on two when other processes hold the
    cores; the next test gets back the thread count it had."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def shakespeare_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model trained for 200 steps on the first 90% of tiny Shakespeare (seconds), shared by the
    evaluation tests: its run directory."""
    import torch

    from gptforge.trainer import train

    run_dir = tmp_path_factory.mktemp("shakespeare") / "run"
    threads = torch.get_num_threads()
    steps = ["trainer.max_steps=200", "trainer.eval_every=0", "trainer.threads=1"]
    train(compose_config([*TINY, f"out_dir={run_dir}", *steps]))
    torch.set_num_threads(threads)  # trainer.threads is set for the whole process
    return run_dir


@pytest.fixture(scope="session")
def next_line_task() -> Path:
    """The shipped task YAML of `write_next_line_task`'s 200 examples (data/tasks/next_line.yaml)."""
    return ROOT / "data" / "tasks" / "next_line.yaml"


# seconds a file takes on the 2-core machine (a fresh clone's `--durations`), for the files long enough
# to decide when the suite ends; the rest count by their markers
FILE_SECONDS = {
    "test_crash_resume.py": 190,
    "test_distributed.py": 150,
    "test_mesh.py": 150,
    "test_readme.py": 147,
    "test_eval_distributed.py": 69,
    "test_memory.py": 63,
    "test_streaming_distributed.py": 60,
    "test_reliability.py": 57,
    "test_gpu_check.py": 53,
    "test_hangs.py": 50,
    "test_resume_world_size.py": 44,
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The longest files first (those of FILE_SECONDS, then other multiprocess and slow tests), then the
    rest in their order: the two xdist workers (one file each at a time) then finish together, instead of
    one waiting on the other's last long file. The sort is stable and the same on every worker, as xdist
    requires."""

    def seconds(item: pytest.Item) -> float:
        if item.path.name in FILE_SECONDS:
            return FILE_SECONDS[item.path.name]
        long = item.get_closest_marker("multiprocess") or item.get_closest_marker("slow")
        return 20 if long else 0

    items.sort(key=lambda item: -seconds(item))
