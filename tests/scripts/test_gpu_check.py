"""scripts/gpu_check.sh --tiny: the GPU check runs end to end on a CPU, every check a row of one table."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import ROOT


@pytest.mark.multiprocess
def test_the_gpu_check_runs_end_to_end_on_a_cpu(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.md"
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--tiny", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    table = out.read_text()
    assert table in done.stdout  # printed and written alike
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines() if line.startswith("| ")}
    for check in ("GPT-2 eager", "GPT-2 compiled", "reference loop", "gptforge", "Llama FSDP2 + AC"):
        assert check in rows and "not run" not in rows[check], table
    assert "ours/reference" in rows["gptforge"] and "compiled/eager" in rows["GPT-2 compiled"]
    # a CPU has no float8 tensor cores: the row says so in the refusal's own words
    assert "not run: trainer.precision=fp8 needs a CUDA GPU" in rows["Llama fp8"]
    assert "memmap random windows" in table and "streaming + BPE + packing, 2 workers" in table
    for strategy in ("ddp", "fsdp", "deepspeed_zero2"):
        assert "4 steps, saved step_2, step_4" in rows[f"{strategy} run"], table
