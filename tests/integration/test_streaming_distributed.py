"""Streaming data under real torchrun ranks: uneven shards never hang a rank, and resume is exact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from launch_utils import TINY_RUN, check, torchrun, train_losses

pytestmark = pytest.mark.multiprocess


def write_corpus(directory: Path) -> str:
    """Three JSONL shards of very different sizes: the ranks' streams are far from even."""
    directory.mkdir()
    for shard, n_docs in enumerate([40, 40, 3]):
        lines = [
            json.dumps({"text": f"document {shard}-{doc}: " + "a fox jumps over the dog. " * (2 + doc % 5)})
            for doc in range(n_docs)
        ]
        (directory / f"part{shard}.jsonl").write_text("\n".join(lines) + "\n")
    return str(directory / "*.jsonl")


# loader workers on: the harder path (0 workers resume alike in tests/data/test_streaming.py, one process)
@pytest.mark.parametrize("num_workers", [2])
def test_two_ranks_stream_uneven_shards_and_resume_exactly(tmp_path: Path, num_workers: int) -> None:
    common = [
        *TINY_RUN,
        "strategy=ddp",
        "data=local",
        f"data.path={write_corpus(tmp_path / 'corpus')}",
        f"data.num_workers={num_workers}",
        "tokenizer=byte",
        "data.val_fraction=0",  # 83 documents hold too few to validate on for 2 ranks x 2 workers
        "scheduler=constant",  # the learning rate does not depend on max_steps, so runs can stop early
        "scheduler.warmup_steps=1",
        "trainer.checkpoint_every=4",
    ]
    straight = tmp_path / "straight"
    check(torchrun([*common, "trainer.max_steps=12", f"out_dir={straight}"], timeout=240))

    resumed = tmp_path / "resumed"
    check(torchrun([*common, "trainer.max_steps=4", f"out_dir={resumed}"], timeout=240))
    check(torchrun([*common, "trainer.max_steps=8", f"out_dir={resumed}"], timeout=240))  # resume once
    check(torchrun([*common, "trainer.max_steps=12", f"out_dir={resumed}"], timeout=240))  # and twice

    expected = train_losses(straight)
    assert sorted(expected) == list(range(1, 13))
    assert train_losses(resumed) == expected  # bit-identical: same batches, same reductions
