"""Checkpoint directories: published only when complete, verified on load, pruned to the last K."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

from gptforge.errors import CheckpointError
from gptforge.trainer.checkpoint import LATEST, Checkpointer, verify


def save(checkpointer: Checkpointer, step: int, payload: bytes = b"weights") -> Path:
    def write_shards(directory: Path) -> None:
        (directory / "model.pt").write_bytes(payload)

    def write_main(directory: Path) -> None:
        (directory / "trainer_state.json").write_text(f'{{"step": {step}}}')

    return checkpointer.save(step, write_shards, write_main)


@pytest.fixture
def checkpointer(tmp_path: Path) -> Checkpointer:
    return Checkpointer(tmp_path / "checkpoints", keep_last=2, is_main=True, barrier=lambda: None)


def test_save_publishes_a_verified_directory_and_moves_latest(checkpointer: Checkpointer) -> None:
    path = save(checkpointer, 10)
    assert path.name == "step_10" and verify(path) is None
    assert (checkpointer.root / LATEST).read_text().strip() == "step_10"
    assert not list(checkpointer.root.glob(".tmp-*"))
    assert checkpointer.latest_valid() == path


def test_keeps_only_the_last_k(checkpointer: Checkpointer) -> None:
    for step in (10, 20, 30):
        save(checkpointer, step)
    assert [p.name for p in checkpointer.step_dirs()] == ["step_30", "step_20"]


@pytest.mark.parametrize("damage", ["truncate", "flip", "remove_manifest", "remove_file"])
def test_a_damaged_checkpoint_is_skipped_for_the_previous_one(
    checkpointer: Checkpointer, damage: str, capsys
) -> None:
    good = save(checkpointer, 10)
    bad = save(checkpointer, 20, payload=b"newer weights")
    model = bad / "model.pt"
    if damage == "truncate":
        model.write_bytes(model.read_bytes()[:3])
    elif damage == "flip":
        data = bytearray(model.read_bytes())
        data[0] ^= 0xFF
        model.write_bytes(bytes(data))
    elif damage == "remove_manifest":
        (bad / "manifest.json").unlink()
    else:
        model.unlink()
    assert checkpointer.latest_valid() == good
    assert "skipping checkpoint" in capsys.readouterr().out


def test_no_valid_checkpoint_fails_loudly(checkpointer: Checkpointer) -> None:
    only = save(checkpointer, 10)
    (only / "model.pt").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="no valid checkpoint"):
        checkpointer.latest_valid()


def test_a_leftover_partial_save_is_replaced(checkpointer: Checkpointer) -> None:
    partial = checkpointer.root / ".tmp-step_10"
    partial.mkdir(parents=True)
    (partial / "junk").write_text("from a crashed save")
    path = save(checkpointer, 10)
    assert not (path / "junk").exists() and verify(path) is None


@pytest.fixture
def small_disk(tmp_path: Path):
    """A real 256 KiB filesystem (tmpfs), so a save really runs out of space."""
    mount_point = tmp_path / "small_disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)], check=False
    )
    if mounted.returncode != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    yield mount_point
    subprocess.run(["umount", "--lazy", str(mount_point)], check=True)


def test_disk_full_during_save_fails_clearly_and_keeps_the_previous_checkpoint(small_disk: Path) -> None:
    checkpointer = Checkpointer(small_disk / "checkpoints", keep_last=2, is_main=True, barrier=lambda: None)
    good = save(checkpointer, 10)

    def write_too_much(directory: Path) -> None:
        torch.save(torch.zeros(128 * 1024), directory / "model.pt")  # 512 KiB into 256 KiB

    with pytest.raises(CheckpointError, match=r"writing checkpoint step_20 in .* failed: .* MB free there"):
        checkpointer.save(20, write_too_much, lambda directory: None)
    assert checkpointer.latest_valid() == good and verify(good) is None
    assert (checkpointer.root / LATEST).read_text().strip() == "step_10"
    assert not list(checkpointer.root.glob(".tmp-*"))  # the partial save is cleaned up


def test_a_failure_on_another_rank_fails_this_rank_too(checkpointer: Checkpointer) -> None:
    other_rank_failed = Checkpointer(
        checkpointer.root, keep_last=2, is_main=True, barrier=lambda: None, any_rank=lambda flag: True
    )
    with pytest.raises(CheckpointError, match="failed on another rank"):
        save(other_rank_failed, 10)
    assert checkpointer.step_dirs() == []


def test_a_damaged_copy_of_the_step_being_saved_is_replaced_and_kept_aside(
    checkpointer: Checkpointer,
) -> None:
    save(checkpointer, 10)
    damaged = save(checkpointer, 20)
    (damaged / "model.pt").write_bytes(b"bit rot")
    assert checkpointer.latest_valid().name == "step_10"  # the run resumes from step 10 ...
    again = save(checkpointer, 20, payload=b"retrained")  # ... and saves step 20 once more
    assert verify(again) is None and (again / "model.pt").read_bytes() == b"retrained"
    assert [p.name.split("-")[0] for p in checkpointer.root.glob("step_20.damaged-*")] == ["step_20.damaged"]


def test_a_prune_cut_short_never_leaves_a_half_deleted_checkpoint(checkpointer: Checkpointer) -> None:
    for step in (10, 20):
        save(checkpointer, step)
    leftover = checkpointer.root / ".pruned-step_5"  # what a SIGKILL inside the prune's rmtree leaves
    leftover.mkdir()
    (leftover / "model.pt").write_bytes(b"half deleted")
    assert [p.name for p in checkpointer.step_dirs()] == ["step_20", "step_10"]
    save(checkpointer, 30)
    assert not leftover.exists()
    assert [p.name for p in checkpointer.step_dirs()] == ["step_30", "step_20"]


@pytest.mark.parametrize("manifest", ["{", "[]", '{"files": {"model.pt": {"size": 1}}}'])
def test_a_mangled_manifest_is_a_damaged_checkpoint(checkpointer: Checkpointer, manifest: str) -> None:
    path = save(checkpointer, 10)
    (path / "manifest.json").write_text(manifest)
    assert verify(path) == "manifest is not valid"


def test_pruning_never_deletes_the_last_valid_checkpoint(tmp_path: Path) -> None:
    # the bug: with the newest checkpoint damaged and keep_last=1, a resume's first prune kept the damaged
    # one and deleted every valid checkpoint, so the next start found none
    root = tmp_path / "checkpoints"
    first = Checkpointer(root, keep_last=3, is_main=True, barrier=lambda: None)
    save(first, 10)
    damaged = save(first, 20)
    (damaged / "model.pt").write_bytes(b"bit rot")

    resumed = Checkpointer(root, keep_last=1, is_main=True, barrier=lambda: None)
    start = resumed.latest_valid()
    assert start.name == "step_10"
    resumed.resume_from(start)  # step_20 is set aside: it is no checkpoint any more
    save(resumed, 15)
    assert [d.name for d in resumed.step_dirs()] == ["step_15"]
    assert [p.name.split("-")[0] for p in root.glob("step_20.damaged-*")] == ["step_20.damaged"]
    assert (
        Checkpointer(root, keep_last=1, is_main=True, barrier=lambda: None).latest_valid().name == "step_15"
    )


def test_a_checkpoint_damaged_while_the_run_goes_on_is_set_aside_not_kept(checkpointer: Checkpointer) -> None:
    save(checkpointer, 10)
    newer = save(checkpointer, 20)
    (newer / "model.pt").write_bytes(b"bit rot")  # between two saves, a checkpoint the prune would keep
    fresh = Checkpointer(checkpointer.root, keep_last=2, is_main=True, barrier=lambda: None)
    save(fresh, 30)  # keep_last=2 counts valid ones: 30 and 10; 20 leaves the step names
    assert [d.name for d in fresh.step_dirs()] == ["step_30", "step_10"]
    assert list(fresh.root.glob("step_20.damaged-*"))


def test_a_checkpoint_directory_that_cannot_be_created_is_the_same_one_line_error(small_inodes: Path) -> None:
    checkpointer = Checkpointer(small_inodes / "checkpoints", keep_last=5, is_main=True, barrier=lambda: None)
    good = save(checkpointer, 10)
    step = 20
    with pytest.raises(CheckpointError) as err:  # creating .tmp-step_N runs out of inodes
        while True:
            save(checkpointer, step)
            step += 10
    message = str(err.value)
    assert "failed: No space left on device" in message and "earlier checkpoints are untouched" in message
    assert "\n" not in message and verify(good) is None


@pytest.fixture
def small_inodes(tmp_path: Path):
    """A real tmpfs with room for a handful of files, so that creating a directory really fails."""
    mount_point = tmp_path / "few_inodes"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,nr_inodes=24", "tmpfs", str(mount_point)], check=False
    )
    if mounted.returncode != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    yield mount_point
    subprocess.run(["umount", "--lazy", str(mount_point)], check=True)
