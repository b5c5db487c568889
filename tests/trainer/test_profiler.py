"""`trainer.profile=true` leaves a readable torch.profiler trace in the run directory."""

from __future__ import annotations

import json
from pathlib import Path

from gptforge.trainer import train


def test_profile_writes_a_chrome_trace_of_the_requested_steps(tiny_config) -> None:
    cfg = tiny_config(
        "trainer.max_steps=8",
        "trainer.profile=true",
        "trainer.profile_wait_steps=1",
        "trainer.profile_warmup_steps=1",
        "trainer.profile_active_steps=2",
    )
    run_dir = Path(cfg.out_dir)
    train(cfg, run_dir)
    traces = list((run_dir / "profile").glob("trace_rank0_step*.json"))
    assert [t.name for t in traces] == ["trace_rank0_step4.json"]  # steps 3-4 recorded
    trace = json.loads(traces[0].read_text())
    assert any(event.get("name") == "aten::mm" for event in trace["traceEvents"])
    assert "aten::" in (run_dir / "profile" / "ops_rank0.txt").read_text()
