"""scripts/benchmark.py train: tokens/s, MFU and peak memory of a config, and the ratio of two."""

from __future__ import annotations

import shlex

from conftest import TINY, run_script

STEPS = ["--steps", "2", "--rounds", "2", "--warmup-steps", "1"]


def test_train_prints_tokens_per_sec_mfu_and_peak_memory() -> None:
    # a configured peak, so that MFU is a figure on a CPU too
    result = run_script("benchmark.py", "train", *TINY, "trainer.peak_flops_per_sec=1e12", *STEPS)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = next(line for line in lines if "step ms" in line)
    assert header.split()[:4] == ["tokens/s", "step", "ms", "MFU"] and "mem GiB" in header
    row = next(line for line in lines if line.startswith("A ")).split()
    # A, tokens/s, (min-max), step ms, MFU, peak memory in GiB, warm-up seconds, loss
    assert row[4].endswith("%") and float(row[5]) > 0


def test_compare_with_the_reference_loop_prints_a_ratio() -> None:
    reference = shlex.join(["reference", *TINY])
    sliced = shlex.join([*TINY, "trainer.cpu_batch_threads=2"])
    result = run_script("benchmark.py", "train", "--compare", reference, sliced, *STEPS)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("A ") and "n/a" in line for line in lines)  # MFU on a CPU without a peak
    assert any(line.startswith("   B = ") and "cpu_batch_threads=2" in line for line in lines)
    assert any(line.startswith("ratio B/A (tokens/s): ") for line in lines)


def test_speedrun_races_the_reference_to_its_val_loss_in_tiny_mode(tmp_path) -> None:
    import json

    result = run_script("benchmark.py", "speedrun", "--tiny", "--json", str(tmp_path / "race.json"))
    assert result.returncode == 0, result.stderr
    race = json.loads((tmp_path / "race.json").read_text())
    reference, speedrun = race["rows"]
    assert reference["config"] == "reference experiment=shakespeare_char_cpu"
    assert speedrun["config"] == "experiment=shakespeare_char_speedrun"
    assert race["target"] == reference["final_val_loss"] and reference["ratio"] == 1.0
    # evaluated at step 0 and every 2 steps, up to the first evaluation at the target (or the last step)
    curve = speedrun["curves"][0]
    assert [step for _, step, _ in curve] == list(range(0, curve[-1][1] + 1, 2))
    reached = [loss <= race["target"] for _, _, loss in curve]
    assert reached.index(True) == len(curve) - 1 if any(reached) else curve[-1][1] == 6
    assert speedrun["params"] <= reference["params"]  # the budget: no more parameters than the reference
    assert "time to target s" in result.stdout
