"""SIGKILL during real saves: a restarted run always finds a verified checkpoint holding what it should.

A forked child saves a real (tiny) GPT and its AdamW state through the real Checkpointer in a loop, as
a run does, starting where a restarted run would; the parent SIGKILLs it and then checks, as the next
start would, that the newest valid checkpoint loads, holds exactly the weights of its step, and that no
checkpoint the child had finished saving was lost (other than by keep_last pruning).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from gptforge.config import ModelConfig, OptimConfig, StrategyConfig
from gptforge.models import GPT
from gptforge.trainer.checkpoint import (
    LATEST,
    MODEL_FILE,
    OPTIMIZER_FILE,
    Checkpointer,
    load_rank_state,
    read_trainer_state,
    save_rank_state,
    verify,
    write_trainer_state,
)
from gptforge.trainer.strategies.base import StepLayout
from gptforge.trainer.strategies.single import SingleDeviceStrategy

KEEP_LAST = 2
KILLS = 50


def build_strategy() -> SingleDeviceStrategy:
    """A real model and optimizer, small enough that a save takes milliseconds."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32))
    strategy = SingleDeviceStrategy(StrategyConfig(), device="cpu", precision="fp32")
    strategy.setup(model, OptimConfig(), StepLayout(micro_batch_size=2, grad_accum_steps=1, grad_clip=1.0))
    tokens = torch.randint(0, 64, (2, 17))
    strategy.forward_backward(tokens[:, :-1], tokens[:, 1:], 1.0, True)
    strategy.clip_and_step(1e-3)  # so the optimizer state is real, not empty
    return strategy


def weights_of(step: int, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Set (and return) the weights a checkpoint of `step` must hold: a function of the step alone."""
    with torch.no_grad():
        for index, param in enumerate(model.parameters()):
            values = torch.arange(param.numel(), dtype=param.dtype).view_as(param) * 1e-4
            param.copy_(values + step + index / 100)
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


def restart_and_save_forever(
    strategy: SingleDeviceStrategy,
    root: Path,
    report_fd: int,
    after_commit: Callable[[int], None] = lambda step: None,
) -> None:
    """What a restarted run does: resume from the newest valid checkpoint, then save step after step."""
    checkpointer = Checkpointer(root, KEEP_LAST, is_main=True, barrier=lambda: None)
    found = checkpointer.latest_valid()
    step = 0
    if found is not None:
        strategy.load(found)
        step = read_trainer_state(found)["step"]
    while True:
        step += 1
        weights_of(step, strategy.model)

        def write_shards(directory: Path, step: int = step) -> None:
            strategy.save(directory)
            save_rank_state(directory, 0, {"step": step})

        def write_main(directory: Path, step: int = step) -> None:
            write_trainer_state(directory, {"step": step, "tokens_seen": step * 64, "world_size": 1})

        checkpointer.save(step, write_shards, write_main)
        os.write(report_fd, f"{step}\n".encode())  # committed: from now on it must never be lost
        after_commit(step)


def in_child(work: Callable[[int], None]) -> tuple[int, int]:
    """Fork a child running `work(report_fd)`; returns its pid and the read end of its reports."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        try:
            work(write_fd)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    os.close(write_fd)
    return pid, read_fd


def reap(pid: int, read_fd: int) -> list[int]:
    """Wait for the SIGKILLed child; the steps it reported as committed."""
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"child ended by {status}"
    chunks = []
    while chunk := os.read(read_fd, 1 << 16):
        chunks.append(chunk)
    os.close(read_fd)
    return [int(line) for line in b"".join(chunks).decode().split()]


def leftover_phase(root: Path) -> str:
    """Where in a save the kill landed, read from what it left behind."""
    if list(root.glob(".pruned-*")):
        return "mid-prune"
    if list(root.glob(".latest.tmp")):
        return "mid-latest"
    partial = list(root.glob(".tmp-step_*"))
    if partial:
        if (partial[0] / ".manifest.json.tmp").exists():
            return "mid-manifest"
        return "before-rename" if (partial[0] / "manifest.json").exists() else "mid-write"
    return "between-saves"


def check_restart_finds_intact_checkpoint(
    root: Path, committed: list[int], reference: torch.nn.Module
) -> int:
    """The checks a restart relies on; returns the step it would resume from."""
    found = Checkpointer(root, KEEP_LAST, is_main=False, barrier=lambda: None).latest_valid()
    if not committed:
        assert found is None or verify(found) is None
        return 0
    assert found is not None, f"no valid checkpoint after commits {committed}"
    step = int(found.name.removeprefix("step_"))
    assert step >= max(committed), f"resumes from {step}, but step {max(committed)} was committed"
    weights = torch.load(found / MODEL_FILE, map_location="cpu", weights_only=True)
    expected = weights_of(step, reference)
    assert weights.keys() == expected.keys()
    assert all(torch.equal(weights[name], expected[name]) for name in expected), (
        f"{found} holds other weights"
    )
    optimizer = torch.load(found / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
    assert len(optimizer["state"]) == len(expected) - 1  # AdamW state for every parameter (tied embedding)
    assert read_trainer_state(found)["step"] == step and load_rank_state(found, 0)["step"] == step

    valid = [int(d.name.removeprefix("step_")) for d in root.glob("step_*") if verify(d) is None]
    for old in committed:  # pruned only once KEEP_LAST newer complete checkpoints exist
        assert old in valid or sum(v > old for v in valid) >= KEEP_LAST, f"step_{old} lost: {sorted(valid)}"
    if (root / LATEST).exists():
        assert int((root / LATEST).read_text().strip().removeprefix("step_")) in valid
    return step


@pytest.fixture
def strategy() -> SingleDeviceStrategy:
    return build_strategy()


def test_fifty_sigkills_at_random_moments_of_saving(tmp_path: Path, strategy, capsys) -> None:
    root = tmp_path / "checkpoints"
    reference = GPT(ModelConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32))
    started = time.perf_counter()  # one save, to scale the random delays to this machine (no assertion)
    pid, read_fd = in_child(lambda fd: restart_and_save_forever(strategy, tmp_path / "calibration", fd))
    while not (tmp_path / "calibration" / "step_3").exists():
        time.sleep(0.001)
    os.kill(pid, signal.SIGKILL)
    reap(pid, read_fd)
    save_seconds = (time.perf_counter() - started) / 3

    rng = random.Random(2024)
    committed: list[int] = []
    phases: Counter[str] = Counter()
    resumed_from = 0
    for _ in range(KILLS):
        pid, read_fd = in_child(lambda fd: restart_and_save_forever(strategy, root, fd))
        time.sleep(rng.uniform(0.2, 3.0) * save_seconds)
        os.kill(pid, signal.SIGKILL)
        committed += reap(pid, read_fd)
        phases[leftover_phase(root)] += 1
        step = check_restart_finds_intact_checkpoint(root, committed, reference)
        assert step >= resumed_from  # never goes back
        resumed_from = step
    with capsys.disabled():
        print(f"\n{KILLS} kills, {len(committed)} saves committed, last step {resumed_from}: {dict(phases)}")
    assert committed and resumed_from >= max(committed)


def sigkill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def arm(phase: str, strategy: SingleDeviceStrategy) -> None:
    """In the child: SIGKILL this process at `phase` of its next save."""
    from gptforge.trainer.checkpoint import store as checkpoint  # where the Checkpointer looks it up

    real_save, real_replace, real_rmtree = strategy.save, os.replace, shutil.rmtree
    real_write_atomic = checkpoint.write_atomic

    def save(directory: Path) -> None:
        real_save(directory)
        if phase == "mid-write":  # model and optimizer written, rank state and trainer state not yet
            sigkill_self()

    def write_atomic(path: Path, text: str) -> None:
        if phase == "mid-manifest" and path.name == "manifest.json":
            path.with_name(".manifest.json.tmp").write_text(text[: len(text) // 2])
            sigkill_self()
        real_write_atomic(path, text)

    def replace(src: Path, dst: Path) -> None:
        if phase == "before-rename" and Path(src).name.startswith(".tmp-step_"):
            sigkill_self()
        real_replace(src, dst)
        if phase == "after-rename" and Path(dst).name.startswith("step_"):  # before `latest` moves
            sigkill_self()

    def rmtree(path: Path, *args, **kwargs) -> None:
        if phase == "mid-prune" and Path(path).name.startswith(".pruned-"):
            next(p for p in Path(path).iterdir() if p.is_file()).unlink()  # one file deleted, then killed
            sigkill_self()
        real_rmtree(path, *args, **kwargs)

    strategy.save, checkpoint.write_atomic = save, write_atomic
    os.replace, shutil.rmtree = replace, rmtree


# what each fault leaves in checkpoints/, and the step a restart then resumes from
PHASES = {
    "mid-write": ("mid-write", 3),
    "mid-manifest": ("mid-manifest", 3),
    "before-rename": ("before-rename", 3),
    "after-rename": ("between-saves", 4),  # step_4 is published; `latest` still names step_3
    "mid-prune": ("mid-prune", 4),
}


@pytest.mark.parametrize("phase", sorted(PHASES))
def test_sigkill_inside_each_step_of_a_save(tmp_path: Path, strategy, phase: str) -> None:
    root = tmp_path / "checkpoints"
    reference = GPT(ModelConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32))

    def three_saves_then_die_in_the_fourth(report_fd: int) -> None:
        def after_commit(step: int) -> None:
            if step == KEEP_LAST + 1:  # the fourth save also prunes
                arm(phase, strategy)

        restart_and_save_forever(strategy, root, report_fd, after_commit)

    pid, read_fd = in_child(three_saves_then_die_in_the_fourth)
    committed = reap(pid, read_fd)
    assert committed == [1, 2, 3]
    left_behind, resume_step = PHASES[phase]
    assert leftover_phase(root) == left_behind
    leftovers = {p.name for p in root.iterdir() if p.name.startswith(".")}
    assert check_restart_finds_intact_checkpoint(root, committed, reference) == resume_step

    pid, read_fd = in_child(lambda fd: restart_and_save_forever(strategy, root, fd))
    while not (root / f"step_{resume_step + 2}").exists():  # the restarted run saves on and cleans up
        time.sleep(0.001)
    os.kill(pid, signal.SIGKILL)
    committed += reap(pid, read_fd)
    check_restart_finds_intact_checkpoint(root, committed, reference)
    assert not leftovers & {p.name for p in root.iterdir()}
