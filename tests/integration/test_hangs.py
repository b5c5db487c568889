"""A rank stuck inside a step: the others fail by name after strategy.timeout_s, and torchrun resumes.

Ranks with uneven data never wait on each other at an epoch's end: every stream cycles through epochs on
its own (tests/integration/test_streaming_distributed.py runs uneven shards across epoch ends).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from launch_utils import ROOT, TINY_RUN, check, env, torchrun, torchrun_command, train_losses

from gptforge.trainer.callbacks import INJECT_HANG_ENV
from gptforge.trainer.strategies.distributed import collective_failure

# 10 s: a whole 12-step run passes with timeout_s=3 on the loaded 2-core test machine (start-up, DDP's
# first broadcast, checkpoint barriers), so normal waits stay far below it; the stuck rank sleeps 15 s
TIMEOUT_S = 10
STUCK_S = 15
RUN = [
    *TINY_RUN,
    "strategy=ddp",
    "trainer.max_steps=12",
    "scheduler.warmup_steps=1",
    "trainer.checkpoint_every=4",
    f"strategy.timeout_s={TIMEOUT_S}",
]


def test_gloo_timeouts_and_lost_peers_become_one_line_naming_rank_and_operation() -> None:
    timed_out = RuntimeError("[gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 5000ms for recv")
    assert str(collective_failure(timed_out, 1, "barrier", 5)).startswith(
        "rank 1: barrier did not finish within strategy.timeout_s=5 s (another rank is stuck or died"
    )
    lost = RuntimeError(
        "[gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:34008. This is typically "
        "caused by a remote worker crashing."
    )
    assert str(collective_failure(lost, 0, "barrier", 5)).startswith(
        "rank 0: barrier failed because another rank left the job "
        "(Connection closed by peer [127.0.0.1]:34008)"
    )
    assert collective_failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied"), 0, "x", 5) is None


@pytest.mark.multiprocess
def test_a_rank_stuck_in_a_step_fails_by_name_and_a_torchrun_restart_resumes(tmp_path: Path) -> None:
    straight = tmp_path / "straight"
    check(torchrun([*RUN, f"out_dir={straight}"]))

    run_dir = tmp_path / "stuck"
    result = subprocess.run(
        torchrun_command([*RUN, f"out_dir={run_dir}"], launcher_flags=("--max-restarts=1",)),
        cwd=ROOT,
        env=env(**{INJECT_HANG_ENV: f"6:1:{STUCK_S}"}),  # rank 1 sleeps in step 7; only the first attempt
        capture_output=True,
        text=True,
        timeout=300,
    )

    check(result)  # the restarted attempt finished
    expected = (
        "error: rank 0: all_reduce of the gradients (DDP backward) did not finish within "
        f"strategy.timeout_s={TIMEOUT_S} s (another rank is stuck or died"
    )
    assert any(line.startswith(expected) for line in result.stderr.splitlines()), result.stderr[-3000:]
    assert "failed (exitcode: 4)" in result.stderr  # CollectiveFailed's own exit code, seen by torchrun
    resumed = [line for line in result.stdout.splitlines() if "resumed from" in line]
    assert len(resumed) == 1 and resumed[0].endswith("checkpoints/step_4 at step 4"), result.stdout[-3000:]
    assert train_losses(run_dir) == train_losses(straight)  # bit for bit on CPU, redone steps included
