"""The bad input battery: every mistake a user can make at the edge ends as one line that names the
culprit and what would be valid, exit status 2, no traceback (unless debug=true), and nothing on disk lost.

Each case runs the real scripts in a fresh interpreter, as a user would. More processes than devices
needs real torchrun ranks: test_more_processes_than_gpus_fails_in_one_line in
tests/integration/test_distributed.py covers it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from conftest import TINY, run_script

FAST = [*TINY, "trainer.max_steps=2", "scheduler.warmup_steps=1", "trainer.eval_every=0"]


NO_GPU_CASE = "checks the error on a machine without a GPU; this one has one"


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny run with a checkpoint (step_2): the out_dir that resume cases point at."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    result = run_script("train.py", *FAST, "trainer.checkpoint_every=2", f"out_dir={run_dir}")
    assert result.returncode == 0, result.stderr
    assert (run_dir / "checkpoints" / "step_2" / "manifest.json").is_file()
    return run_dir


def digest(run_dir: Path) -> dict[str, str]:
    """sha256 of every file of the run; the record of each start (.hydra/, train.log, the lock's holder)
    aside."""
    return {
        str(path.relative_to(run_dir)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(run_dir.rglob("*"))
        if path.is_file() and ".hydra" not in path.parts and path.name not in ("train.log", ".gptforge.lock")
    }


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def foreign_weights(tmp_path: Path) -> Path:
    """A .safetensors file that names no architecture and whose tensors fit no gptforge model."""
    from safetensors.torch import save_file

    path = tmp_path / "foreign.safetensors"
    save_file({"encoder.weight": torch.zeros(4, 4)}, str(path))
    return path


def corrupt_copy(run_dir: Path, tmp_path: Path) -> Path:
    """A copy of the run whose every checkpoint has one bit flipped in its model weights."""
    copy = tmp_path / "corrupt"
    shutil.copytree(run_dir, copy)
    for weights in (copy / "checkpoints").glob("step_*/model.pt"):
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0x01
        weights.write_bytes(bytes(data))
    return copy


@dataclass
class Case:
    """`script` run with `args(tmp_path, trained_run)`; its one error line must hold every `expected`."""

    args: Callable[[Path, Path], list[str]]
    expected: tuple[str, ...]
    script: str = "train.py"
    guards: Callable[[Path, Path], Path] | None = None  # the run directory that must stay as it was
    marks: list = field(default_factory=list)


def train(*overrides: str) -> Callable[[Path, Path], list[str]]:
    return lambda tmp, run: [*FAST, f"out_dir={tmp / 'out'}", *overrides]


def with_data(name: str, content: str | bytes, *overrides: str) -> Callable[[Path, Path], list[str]]:
    """train.py on a data file `name` (a trailing / makes an empty directory) written into tmp_path."""

    def args(tmp: Path, run: Path) -> list[str]:
        path = tmp / name
        if name.endswith("/"):
            path.mkdir()
        else:
            write(path, content)
        return [*FAST, f"out_dir={tmp / 'out'}", f"data.path={path}", *overrides]

    return args


def on_run(*overrides: str) -> Callable[[Path, Path], list[str]]:
    return lambda tmp, run: [*FAST, f"out_dir={run}", "trainer.max_steps=4", *overrides]


LOCAL = ("data=local", "data.num_workers=0")
JSONL = '{"text": "First Citizen: Before we proceed any further, hear me speak."}\n'
TASK = (
    '{"context": "ROMEO:", "choices": [" Ay.", " No."], "gold": 1}\n'
    '{"context": "ROMEO:", "choices": [" Ay.", " No."]}\n'
)

CASES = {
    # config: checked as Hydra composes it, before anything is built
    "unknown key": Case(train("model.n_layr=4"), ("model.n_layr", "unknown key", "n_layer")),
    "wrong type": Case(train("trainer.max_steps=many"), ("trainer.max_steps", "many", "Integer")),
    "zero size": Case(train("model.n_layer=0"), ("model.n_layer=0", "> 0")),
    "negative size": Case(train("trainer.micro_batch_size=-4"), ("trainer.micro_batch_size=-4", "> 0")),
    "n_embd % n_head": Case(train("model.n_head=3"), ("model.n_embd=32", "model.n_head=3", "multiple")),
    "n_head % n_kv_head": Case(
        train("model=llama_tiny", "model.n_kv_head=3"), ("model.n_head=2", "model.n_kv_head=3", "divide")
    ),
    "warm-up longer than the run": Case(
        train("scheduler.warmup_steps=10"), ("scheduler.warmup_steps=10", "trainer.max_steps=2")
    ),
    "unknown strategy": Case(train("strategy=foo"), ("strategy/foo", "ddp", "fsdp", "single")),
    "unknown scheduler": Case(train("scheduler=foo"), ("scheduler/foo", "cosine", "wsd")),
    "unknown tokenizer": Case(train("tokenizer=foo"), ("tokenizer/foo", "byte", "char")),
    "unknown model": Case(train("model=gpt5"), ("model/gpt5", "gpt2_124m", "llama_tiny")),
    "bad precision": Case(train("trainer.precision=fp4"), ("trainer.precision='fp4'", "bf16", "fp8")),
    # numbers torch would take and train to NaN weights with (or fail on deep inside)
    "lr NaN": Case(train("optim.lr=nan"), ("optim.lr=nan", "finite number")),
    "lr infinite": Case(train("optim.lr=inf"), ("optim.lr=inf", "finite number")),
    "grad_clip NaN": Case(train("trainer.grad_clip=nan"), ("trainer.grad_clip=nan", "finite number")),
    "AdamW eps zero": Case(train("optim.eps=0"), ("optim.eps=0.0", "> 0")),
    "a logger list of the wrong type": Case(
        train("logger=[console,jsonl,5]"), ("logger=[console, jsonl, 5]", "5 is not a logger option", "wandb")
    ),
    "out_dir is a file": Case(
        lambda tmp, run: [*FAST, f"out_dir={write(tmp / 'notes.txt', 'keep me')}"],
        ("out_dir=", "notes.txt", "it is a file", "a directory this user can create"),
    ),
    # data: checked when the files are opened, before the model is built
    "missing data file": Case(train("data.path=missing.txt"), ("missing.txt does not exist", "data.path")),
    "empty data file": Case(with_data("empty.txt", ""), ("empty.txt is empty", "text")),
    "empty data directory": Case(with_data("corpus/", "", *LOCAL), ("corpus", "no data files", ".jsonl")),
    "unknown file type": Case(
        with_data("corpus.csv", "a,b\n", *LOCAL), ("corpus.csv", "text, json or parquet")
    ),
    "JSONL without text_field": Case(
        with_data("corpus.jsonl", '{"body": "words"}\n', *LOCAL), ("corpus.jsonl", "'text'", "body")
    ),
    "invalid JSON line": Case(
        with_data("corpus.jsonl", JSONL + "{not json\n", *LOCAL),
        ("corpus.jsonl:2", "not valid JSON", "one JSON object"),
    ),
    "non-UTF-8 text": Case(
        with_data("latin1.txt", "café au lait\n".encode("latin-1") * 50), ("latin1.txt", "not valid UTF-8")
    ),
    "corpus shorter than block_size": Case(
        with_data("short.txt", "To be or not to be.\n"),
        ("data.path=", "short.txt", "model.block_size=32", "more text"),
    ),
    # tasks (eval.tasks): loaded and encoded before the model is built
    "task file missing a field": Case(
        lambda tmp, run: [*FAST, f"out_dir={tmp / 'out'}", f"eval.tasks=[{write(tmp / 'task.jsonl', TASK)}]"],
        ("task.jsonl:2", "no field 'gold'", "gold_field"),
    ),
    # checkpoints: checked before anything in the run directory changes
    "init_from missing": Case(
        train("trainer.init_from=nowhere/step_9"), ("trainer.init_from=nowhere/step_9", "does not exist")
    ),
    "init_from weights that fit no model": Case(
        lambda tmp, run: [
            *FAST,
            f"out_dir={tmp / 'out'}",
            f"trainer.init_from={foreign_weights(tmp)}",
            "tokenizer=byte",  # char could not rebuild an alphabet that no file beside them names
        ],
        ("trainer.init_from=", "foreign.safetensors", "does not fit the model", "missing"),
    ),
    "floor above the peak": Case(
        train("scheduler.min_lr_ratio=2"), ("scheduler.min_lr_ratio=2", "fraction of optim.lr", "[0, 1]")
    ),
    "no corpus for a pretrain run": Case(
        lambda tmp, run: ["experiment=pretrain", f"out_dir={tmp / 'out'}"], ("data.path is not set", "a glob")
    ),
    "init_from a corrupt checkpoint": Case(
        lambda tmp, run: [*FAST, f"out_dir={tmp / 'out'}", f"trainer.init_from={corrupt_copy(run, tmp)}"],
        ("corrupt", "manifest.json"),
        guards=lambda tmp, run: tmp / "corrupt",
    ),
    "resume with another model shape": Case(
        on_run("model.n_layer=3"), ("model.n_layer: 2 -> 3", "new out_dir"), guards=lambda tmp, run: run
    ),
    "resume with another tokenizer": Case(
        on_run("tokenizer=byte"),
        ("tokenizer.name: 'char' -> 'byte'", "original config"),
        guards=lambda tmp, run: run,
    ),
    "overwrite with a missing data file": Case(
        on_run("trainer.resume=never", "trainer.overwrite=true", "data.path=missing.txt"),
        ("missing.txt does not exist",),
        guards=lambda tmp, run: run,  # validated before the earlier run is moved aside: nothing moved
    ),
    "resume=never without overwrite": Case(
        on_run("trainer.resume=never"),
        ("holds an earlier run", "trainer.overwrite=true"),
        guards=lambda tmp, run: run,
    ),
    "every checkpoint corrupt": Case(
        lambda tmp, run: [*FAST, f"out_dir={corrupt_copy(run, tmp)}", "trainer.max_steps=4"],
        ("no valid checkpoint", "corrupt", "trainer.resume=never trainer.overwrite=true"),
        guards=lambda tmp, run: tmp / "corrupt",
    ),
    "evaluate a directory without checkpoints": Case(
        lambda tmp, run: [str(write(tmp / "notes" / "readme.txt", "hi").parent)],
        ("notes", "holds no checkpoint", "run directory"),
        script="evaluate.py",
    ),
    "generate from a corrupt checkpoint": Case(
        lambda tmp, run: [str(corrupt_copy(run, tmp) / "checkpoints" / "step_2")],
        ("step_2", "model.pt does not match its checksum"),
        script="generate.py",
        guards=lambda tmp, run: tmp / "corrupt",
    ),
    "serve a missing checkpoint": Case(
        lambda tmp, run: [str(tmp / "nowhere"), "--port", "0"],
        ("nowhere does not exist", "step_<N>"),
        script="serve.py",
    ),
    "export a missing checkpoint": Case(
        lambda tmp, run: [str(tmp / "nowhere"), str(tmp / "hf")],
        ("nowhere does not exist", "step_<N>"),
        script="export_hf.py",
    ),
    # devices: one process asking for a GPU that is not there (more ranks than GPUs: see the docstring)
    "cuda without a GPU": Case(
        train("trainer.device=cuda"),
        ("trainer.device=cuda", "auto or cpu"),
        marks=[
            pytest.mark.skipif(
                torch.cuda.is_available(),
                reason=NO_GPU_CASE,
            )
        ],
    ),
}


@pytest.mark.parametrize(
    "case", [pytest.param(case, id=name, marks=case.marks) for name, case in CASES.items()]
)
def test_bad_input_gives_one_line_and_loses_nothing(case: Case, tmp_path: Path, trained_run: Path) -> None:
    args = case.args(tmp_path, trained_run)
    guarded = case.guards(tmp_path, trained_run) if case.guards else None
    before = digest(guarded) if guarded else None
    result = run_script(case.script, *args)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in case.expected:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    assert "Traceback" not in result.stdout + result.stderr
    if guarded:
        assert digest(guarded) == before
    if case.script == "train.py" and guarded is None:
        assert not (tmp_path / "out" / "checkpoints").exists()


@pytest.mark.parametrize("asked", [["debug=true"], []], ids=["debug=true", "GPTFORGE_DEBUG=1"])
def test_debug_shows_the_traceback_as_every_error_line_says(tmp_path: Path, asked: list[str]) -> None:
    env = {} if asked else {"GPTFORGE_DEBUG": "1"}
    for culprit in ("model.n_layer=0", "data.path=missing.txt"):  # at composition, and inside the run
        result = run_script("train.py", *FAST, f"out_dir={tmp_path}", culprit, *asked, env=env)
        assert result.returncode != 0
        assert "Traceback (most recent call last)" in result.stderr, result.stderr
        assert "Error:" in result.stderr.splitlines()[-1]


def test_the_trained_run_is_intact_after_the_battery(trained_run: Path) -> None:
    result = run_script(
        "evaluate.py", str(trained_run), "--batches", "1", "--json", str(trained_run.parent / "e.json")
    )
    assert result.returncode == 0, result.stderr
    assert json.loads((trained_run.parent / "e.json").read_text())["checkpoint"].endswith("step_2")
