"""A checkpoint resumed under another world size (real torchrun): it continues the same run, or stops
every rank at start with one line saying how to resume, and leaves the run directory as it was.

Random-window data (shakespeare_char, memmap) draws each step's global batch from (seed, step) alone, and
DDP's checkpoint is rank 0's plain state dict, so 2 ranks x 4 sequences and 1 rank x 4 x 2 micro-batches
continue the same run; the losses then differ from one uninterrupted run only by the order of float sums
(LOSS_TOLERANCE, as in test_distributed.py). Streaming data keeps a position per rank: refused.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
from launch_utils import TINY_RUN, check, max_difference, torchrun, train_losses

from gptforge.trainer import train

pytestmark = pytest.mark.multiprocess

LOSS_TOLERANCE = 1e-4
RUN = [
    *TINY_RUN,
    "strategy=ddp",
    "scheduler.warmup_steps=1",
    "scheduler.decay_steps=12",  # the schedule does not move when max_steps grows between the legs
    "trainer.checkpoint_every=4",
]


def launch(overrides: list[str], nproc: int, logs: Path) -> subprocess.CompletedProcess:
    """torchrun with each rank's output in its own file: <logs>/<run id>/attempt_0/<rank>/stderr.log."""
    return torchrun(overrides, nproc, timeout=300, launcher_flags=(f"--log-dir={logs}", "--redirects=3"))


def rank_output(logs: Path, stream: str) -> dict[int, str]:
    """Rank -> what that rank wrote to `stream` (stdout or stderr) in the last launch logged there."""
    runs = sorted(logs.iterdir(), key=lambda p: p.stat().st_mtime)
    attempt = runs[-1] / "attempt_0"
    return {int(rank.name): (rank / f"{stream}.log").read_text() for rank in attempt.iterdir()}


def digest(run_dir: Path) -> dict[str, str]:
    """sha256 of every file of the run; Hydra's own record of each launch (.hydra/, train.log) aside."""
    return {
        str(path.relative_to(run_dir)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(run_dir.rglob("*"))
        if path.is_file() and ".hydra" not in path.parts and path.name != "train.log"
    }


def assert_refused_on_every_rank(result: subprocess.CompletedProcess, logs: Path, nproc: int, expected: str):
    assert result.returncode != 0
    errors = rank_output(logs, "stderr")
    assert sorted(errors) == list(range(nproc))
    for rank, text in errors.items():
        lines = text.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {expected}"), f"rank {rank}: {text}"
    assert result.stderr.count("exitcode: 2") >= 1  # torchrun reports the ranks' exit code 2


def test_two_ranks_to_one_and_back_continue_the_same_run(tiny_config, tmp_path: Path) -> None:
    batch = "trainer.global_batch_size=8"  # 2 ranks x 4, or 1 rank x 4 x 2 micro-batches
    reference = tiny_config(*RUN[1:], batch, "strategy=single", "trainer.max_steps=12", "trainer.threads=1")
    train(reference, Path(reference.out_dir))

    run_dir, logs = tmp_path / "resumed", tmp_path / "logs"  # (tiny_config writes to tmp_path / "run")
    check(launch([*RUN, batch, "trainer.max_steps=4", f"out_dir={run_dir}"], 2, logs))
    before = digest(run_dir)

    refused = launch([*RUN, "trainer.max_steps=8", f"out_dir={run_dir}"], 1, logs)  # global batch 4, not 8
    assert_refused_on_every_rank(
        refused,
        logs,
        1,
        "checkpoint step_4 was written by 2 ranks; this run has 1 (its global batch was 8 sequences per "
        "step, this run's is 4; trainer.global_batch_size=8 keeps it): resume with NPROC=2, or start a new "
        f"run from its weights with trainer.init_from={run_dir / 'checkpoints' / 'step_4'} out_dir=<new dir>",
    )
    assert digest(run_dir) == before  # nothing written, nothing deleted

    check(launch([*RUN, batch, "trainer.max_steps=8", f"out_dir={run_dir}"], 1, logs))
    assert "resumed from" in rank_output(logs, "stdout")[0]
    check(launch([*RUN, batch, "trainer.max_steps=12", f"out_dir={run_dir}"], 2, logs))
    assert "resumed from" in rank_output(logs, "stdout")[0]

    states = [
        json.loads((run_dir / "checkpoints" / f"step_{s}" / "trainer_state.json").read_text())
        for s in (8, 12)
    ]
    assert [s["world_size"] for s in states] == [1, 2]
    expected, got = train_losses(Path(reference.out_dir)), train_losses(run_dir)
    assert sorted(got) == list(range(1, 13)) and got[12] < got[1] - 0.5
    assert max_difference(expected, got) < LOSS_TOLERANCE


def write_corpus(directory: Path) -> str:
    directory.mkdir()
    for shard in range(4):
        docs = [{"text": f"doc {shard}-{i}: " + "the quick brown fox. " * (3 + i % 4)} for i in range(30)]
        (directory / f"part{shard}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    return str(directory / "*.jsonl")


def test_streaming_data_on_another_world_size_is_refused_on_every_rank(tiny_config, tmp_path: Path) -> None:
    streaming = [
        "data=local",
        f"data.path={write_corpus(tmp_path / 'corpus')}",
        "data.num_workers=0",
        "tokenizer=byte",
        "trainer.max_steps=4",
    ]
    one_rank = tiny_config(*RUN[1:], *streaming, "strategy=single", "trainer.threads=1")
    run_dir = Path(one_rank.out_dir)
    train(one_rank, run_dir)
    before = digest(run_dir)

    logs = tmp_path / "logs"
    result = launch([*RUN, *streaming, "trainer.max_steps=8", f"out_dir={run_dir}"], 2, logs)
    assert_refused_on_every_rank(
        result,
        logs,
        2,
        "checkpoint step_4 was written by 1 rank; this run has 2 (data.source=local keeps a stream position "
        "per rank): resume with NPROC=1, or start a new run from its weights with trainer.init_from=",
    )
    assert "Traceback" not in "".join(rank_output(logs, "stderr").values())
    assert digest(run_dir) == before
