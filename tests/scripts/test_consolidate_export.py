"""consolidate.py and export_hf.py on a run whose newest checkpoint is damaged: both take the newest valid
one, and the files they write are readable by the group and others, as every other file of a run."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from conftest import TINY, compose_config, run_script

from gptforge.trainer import train


def test_consolidate_and_export_skip_a_damaged_checkpoint_and_write_readable_files(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    overrides = [*TINY, f"out_dir={run_dir}", "trainer.max_steps=4", "trainer.checkpoint_every=2"]
    train(compose_config([*overrides, "scheduler.warmup_steps=1", "trainer.eval_every=0"]), run_dir)
    newest = run_dir / "checkpoints" / "step_4" / "model.pt"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0x01  # `latest` still names step_4
    newest.write_bytes(bytes(data))

    consolidated = run_script("consolidate.py", str(run_dir), "--out", str(tmp_path / "model.safetensors"))
    assert consolidated.returncode == 0, consolidated.stderr
    assert "skipping checkpoint" in consolidated.stdout and "step_4" in consolidated.stdout
    assert "from a single checkpoint" in consolidated.stdout
    exported = run_script("export_hf.py", str(run_dir), str(tmp_path / "hf"))
    assert exported.returncode == 0, exported.stderr
    assert "step_2" in exported.stdout

    umask = os.umask(0)
    os.umask(umask)
    for path in (tmp_path / "model.safetensors", tmp_path / "hf" / "model.safetensors"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path
    assert stat.S_IMODE((tmp_path / "hf" / "config.json").stat().st_mode) == 0o666 & ~umask
