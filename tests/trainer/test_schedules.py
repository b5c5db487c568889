"""Learning-rate schedules at the steps a user would check on a plot."""

from __future__ import annotations

import math

import pytest

from gptforge.config import SchedulerConfig
from gptforge.errors import ConfigError
from gptforge.trainer.schedules import LRSchedule


def schedule(name: str, **kwargs) -> LRSchedule:
    cfg = SchedulerConfig(name=name, warmup_steps=10, min_lr_ratio=0.1, **kwargs)
    return LRSchedule(cfg, peak_lr=1.0, max_steps=110)


@pytest.mark.parametrize("name", ["cosine", "linear", "wsd", "constant"])
def test_warmup_is_linear_up_to_the_peak(name: str) -> None:
    lr = schedule(name)
    assert lr(0) == pytest.approx(0.1)
    assert lr(4) == pytest.approx(0.5)
    assert lr(9) == pytest.approx(1.0)


def test_cosine_reaches_half_way_and_the_floor() -> None:
    lr = schedule("cosine")
    assert lr(10) == pytest.approx(1.0)
    assert lr(60) == pytest.approx(0.55)  # halfway: min + (peak - min) / 2
    assert lr(35) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.25)))
    assert lr(110) == pytest.approx(0.1)
    assert lr(500) == pytest.approx(0.1)


def test_linear_decays_in_a_straight_line() -> None:
    lr = schedule("linear")
    assert lr(60) == pytest.approx(0.55)
    assert lr(85) == pytest.approx(0.325)


def test_wsd_holds_then_decays_over_the_last_fraction() -> None:
    lr = schedule("wsd", wsd_decay_fraction=0.2)  # decay from step 88 to 110
    assert lr(50) == pytest.approx(1.0)
    assert lr(88) == pytest.approx(1.0)
    assert lr(99) == pytest.approx(0.55)
    assert lr(110) == pytest.approx(0.1)


def test_constant_stays_at_the_peak() -> None:
    assert schedule("constant")(100) == pytest.approx(1.0)


def test_decay_steps_shorter_than_the_run() -> None:
    lr = schedule("cosine", decay_steps=60)
    assert lr(35) == pytest.approx(0.55)
    assert lr(80) == pytest.approx(0.1)


def test_the_floor_follows_the_peak_so_a_lower_lr_still_decays() -> None:
    # an absolute floor of 6e-5 under a peak of 1e-4 would have made this "decay" rise
    lr = LRSchedule(SchedulerConfig(name="cosine", warmup_steps=10, min_lr_ratio=0.1), 1e-4, 110)
    assert lr(10) == pytest.approx(1e-4)
    assert lr(110) == pytest.approx(1e-5)
    assert all(lr(step + 1) <= lr(step) for step in range(10, 120))


def test_a_floor_above_the_peak_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match=r"scheduler\.min_lr_ratio=1\.5 is not valid"):
        SchedulerConfig(min_lr_ratio=1.5)
