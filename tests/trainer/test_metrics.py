"""Throughput and MFU: the FLOP count against a hand count, the meter's arithmetic, a real run's records."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gptforge.config import ModelConfig
from gptforge.models import GPT
from gptforge.trainer import train
from gptforge.trainer.metrics import GIB, BuildMemory, ThroughputMeter, peak_flops_per_sec

# the tiny test model (TINY in conftest): gpt2 flavour, untied head, 66 characters in tiny Shakespeare
C, L, H, T, V = 32, 2, 2, 32, 66
PER_BLOCK = {  # weights + biases of each layer in one block
    "ln_1": 2 * C,
    "attn.qkv": C * 3 * C + 3 * C,
    "attn.proj": C * C + C,
    "ln_2": 2 * C,
    "mlp.fc": C * 4 * C + 4 * C,
    "mlp.proj": 4 * C * C + C,
}
HAND_NON_EMBEDDING = L * sum(PER_BLOCK.values()) + 2 * C + V * C  # + final norm + untied lm_head
HAND_FLOPS_PER_TOKEN = 6 * HAND_NON_EMBEDDING + 12 * L * H * (C // H) * T  # = 190,080


def tiny_model() -> GPT:
    return GPT(ModelConfig(vocab_size=V, block_size=T, n_layer=L, n_head=H, n_embd=C, tie_embeddings=False))


def test_flops_per_token_matches_a_hand_count() -> None:
    model = tiny_model()
    assert model.num_params(non_embedding=True) == HAND_NON_EMBEDDING == 27_584
    assert model.num_params(non_embedding=False) == HAND_NON_EMBEDDING + V * C + T * C
    assert model.flops_per_token() == HAND_FLOPS_PER_TOKEN == 190_080


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_meter_reports_tokens_per_sec_mfu_and_data_wait_from_its_clock() -> None:
    clock = FakeClock()
    meter = ThroughputMeter(HAND_FLOPS_PER_TOKEN, peak_per_device=1e9, world_size=2, clock=clock)
    for _ in range(10):
        with meter.data_wait():
            clock.now += 0.01  # 10 ms in the loader
        clock.now += 0.04
        meter.update(256)
    report = meter.report()
    assert report["tokens_per_sec"] == pytest.approx(2560 / 0.5)
    assert report["tokens_per_sec_per_device"] == pytest.approx(2560 / 0.5 / 2)
    assert report["step_time_s"] == pytest.approx(0.05)
    assert report["data_wait_s"] == pytest.approx(0.01)
    # MFU by hand: 190,080 FLOPs/token x 5,120 tokens/s over 2 devices of 1 GFLOP/s each
    assert report["mfu"] == pytest.approx(190_080 * 5120 / 2e9)
    assert meter.report()["tokens_per_sec"] == 0  # a report starts a new window


def test_checkpoint_and_evaluation_time_are_left_out_of_throughput() -> None:
    clock = FakeClock()
    meter = ThroughputMeter(1000, peak_per_device=None, world_size=1, clock=clock)
    for _ in range(4):  # four steps of 0.25 s, with a 3 s checkpoint and a 1 s evaluation among them
        clock.now += 0.25
        meter.update(500)
        with meter.paused():
            clock.now += 1.0
    with meter.paused():
        clock.now += 1.0
    report = meter.report()
    assert report["tokens_per_sec"] == pytest.approx(2000 / 1.0)  # not 2000 / 6.0
    assert report["step_time_s"] == pytest.approx(0.25)


class TwoRanks:
    """Rank 0 of two, whose partner took 0.7 s (0.3 s of it waiting for data) with 3 GiB at its peak."""

    rank, world_size, device = 0, 2, torch.device("cpu")

    def all_reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        partner = torch.tensor([0.7, 0.3, 0.0, 3.0 * GIB], dtype=tensor.dtype)
        return (tensor + partner) / 2


def test_meter_averages_times_over_ranks_and_takes_the_largest_peak_memory() -> None:
    clock = FakeClock()
    meter = ThroughputMeter(1000, peak_per_device=None, world_size=2, clock=clock)
    with meter.data_wait():
        clock.now += 0.1
    clock.now += 0.2
    meter.update(1000)
    report = meter.report(TwoRanks())
    assert report["step_time_s"] == pytest.approx((0.3 + 0.7) / 2)
    assert report["data_wait_s"] == pytest.approx((0.1 + 0.3) / 2)
    assert report["tokens_per_sec"] == pytest.approx(1000 / 0.5)
    assert report["peak_memory_gib"] == pytest.approx(3.0)  # this process uses far less than 3 GiB
    assert "mfu" not in report  # no peak known: n/a rather than a guess


class TwoRanksAfterTheirBuild(TwoRanks):
    """The partner also had 1 GiB in use before its model build and a 2 GiB peak once built."""

    def all_reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.numel() == 4:  # later records carry the peak alone
            return super().all_reduce_mean(tensor)
        # [elapsed, data wait, then per rank: peak, before build, peak after build]
        partner = torch.tensor([0.7, 0.3, 0.0, 3.0 * GIB, 0.0, 1.0 * GIB, 0.0, 2.0 * GIB], dtype=tensor.dtype)
        return (tensor + partner) / 2


def test_the_first_record_carries_the_build_memory_largest_over_ranks() -> None:
    build = BuildMemory(before_build=GIB // 2, peak_after_build=GIB)
    meter = ThroughputMeter(1000, peak_per_device=None, world_size=2, clock=FakeClock(), build_memory=build)
    first = meter.report(TwoRanksAfterTheirBuild())
    assert first["memory_before_build_gib"] == pytest.approx(1.0)  # the partner's, larger than ours
    assert first["peak_memory_after_build_gib"] == pytest.approx(2.0)
    assert first["peak_memory_gib"] == pytest.approx(3.0)
    later = meter.report(TwoRanksAfterTheirBuild())
    assert "memory_before_build_gib" not in later and later["peak_memory_gib"] == pytest.approx(3.0)


def test_peak_flops_configured_wins_and_cpu_has_none() -> None:
    assert peak_flops_per_sec(torch.device("cpu")) is None
    assert peak_flops_per_sec(torch.device("cpu"), configured=2e12) == 2e12


def test_a_run_logs_positive_throughput_and_an_mfu_below_one(tiny_config) -> None:
    peak = 1e11  # far above what a tiny model reaches on a CPU core, far below a GPU's
    cfg = tiny_config("trainer.max_steps=12", "trainer.log_every=4", f"trainer.peak_flops_per_sec={peak}")
    train(cfg, Path(cfg.out_dir))
    lines = (Path(cfg.out_dir) / "metrics.jsonl").read_text().splitlines()
    records = [r for r in map(json.loads, lines) if "loss" in r]
    assert [r["step"] for r in records] == [1, 4, 8, 12]
    for r in records:
        assert r["tokens_per_sec"] > 0
        assert r["tokens_per_sec_per_device"] == r["tokens_per_sec"]  # one device
        assert 0 < r["mfu"] < 1
        assert r["mfu"] == pytest.approx(HAND_FLOPS_PER_TOKEN * r["tokens_per_sec"] / peak)
        assert 0 <= r["data_wait_s"] < r["step_time_s"]
        assert r["peak_memory_gib"] > 0  # CPU: the process's peak resident memory
        assert r["tokens_seen"] == r["step"] * 4 * 32
    assert records[-1]["eta_s"] == 0


def test_a_cpu_peak_is_the_process_own_not_its_parents() -> None:
    # exec keeps ru_maxrss from the process that forked: a run started by a large parent (this test
    # runner, a notebook) would report the parent's size as its peak
    parent = bytearray(400 * 2**20)
    parent[::4096] = b"\1" * len(parent[::4096])  # touched: resident in this process
    code = (
        "import torch; from gptforge.trainer.metrics import peak_memory_bytes; "
        "print(peak_memory_bytes(torch.device('cpu')))"
    )
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(child.stdout) < 350 * 2**20  # torch alone is ~250 MB resident
    del parent
