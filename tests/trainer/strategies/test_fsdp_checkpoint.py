"""fsdp checkpoints of the earlier layout still resume: their optimizer groups were keyed by index.

Since pipeline stages, fsdp saves the optimizer's group settings keyed by parameter name (two stages'
groups keyed by index overwrote each other in DCP). A checkpoint written the earlier way is read the
earlier way: here one is written by the real code with the earlier option, then resumed by today's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, TINY, run_script

RUN = [
    *TINY,
    "strategy=fsdp",
    "trainer.max_steps=4",
    "scheduler.warmup_steps=1",
    "scheduler.decay_steps=4",  # the first leg stops at step 2 on the same schedule
    "trainer.eval_every=0",
    "trainer.log_every=1",
    "trainer.checkpoint_every=2",
]
EARLIER_WRITER = """
import sys
from torch.distributed.checkpoint.state_dict import StateDictOptions
import gptforge.trainer.strategies.fsdp as fsdp
from gptforge.compose import compose
from gptforge.trainer import train

fsdp.FLAT_OPTIMIZER = StateDictOptions()  # what fsdp saved before pipeline stages
train(compose(sys.argv[1:]))
"""


def losses(run_dir: Path) -> dict[int, float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if "loss" in r}


def test_a_checkpoint_with_optimizer_groups_keyed_by_index_resumes_exactly(tmp_path: Path) -> None:
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run_script("train.py", *RUN, f"out_dir={straight}").returncode == 0
    earlier = subprocess.run(
        [sys.executable, "-c", EARLIER_WRITER, *RUN, "trainer.max_steps=2", f"out_dir={resumed}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert earlier.returncode == 0, earlier.stderr
    assert (resumed / "checkpoints/step_2/dcp/.metadata").is_file()

    result = run_script("train.py", *RUN, f"out_dir={resumed}")
    assert result.returncode == 0, result.stderr
    assert "resumed from" in result.stdout
    assert losses(resumed) == losses(straight)  # one process, fp32: the same numbers bit for bit
