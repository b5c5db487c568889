"""Streams: disjoint per rank and worker, never starved, seeded, resumed exactly, mixed by weight."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from data_helpers import doc_ids, local_source, spec, write_jsonl, write_parquet, write_txt_dir

from gptforge.data import StreamingLoader
from gptforge.data.stream import BlockStream, DocumentReader


def epoch_documents(reader: DocumentReader) -> list[str]:
    texts = []
    while reader.epoch == 0:
        texts += reader.read(3)
    return texts


@pytest.mark.parametrize(("n_files", "n_streams"), [(8, 4), (3, 2), (3, 4), (1, 4)])
def test_streams_are_disjoint_and_cover_the_corpus(tmp_path: Path, n_files: int, n_streams: int) -> None:
    source = local_source(write_txt_dir(tmp_path / "corpus", n_files, docs_per_file=5))
    stream_spec = spec([source])
    # stream id = rank * workers_per_rank + worker: 2 ranks x 2 workers are streams 0..3
    seen = [
        epoch_documents(DocumentReader(stream_spec, 0, s, n_streams, [0, 0, 0])) for s in range(n_streams)
    ]
    everything = [text for texts in seen for text in texts]
    assert sorted(t.split()[0] for t in everything) == [f"doc{i:05d}" for i in range(n_files * 5)]
    assert all(seen), "every stream gets documents"


def test_two_ranks_with_two_workers_read_different_documents(tmp_path: Path) -> None:
    source = local_source(write_txt_dir(tmp_path / "corpus", 8, docs_per_file=20))
    loaders = [
        StreamingLoader(spec([source], block_len=65), 2, rank=r, world_size=2, num_workers=2) for r in (0, 1)
    ]
    ids = [set(doc_ids([torch.cat(next(loader), dim=1) for _ in range(10)])) for loader in loaders]
    assert ids[0] and ids[1] and not ids[0] & ids[1]


def test_uneven_shards_never_starve_a_rank(tmp_path: Path) -> None:
    big = write_jsonl(tmp_path / "a.jsonl", range(200))
    write_jsonl(tmp_path / "b.jsonl", range(200, 202))  # rank 1 gets a two-document shard
    source = local_source(tmp_path / "*.jsonl")
    assert big.exists() and source.n_units == 2
    small_rank = StreamingLoader(spec([source], shuffle_blocks=0), 4, rank=1, world_size=2)
    batches = [next(small_rank)[0] for _ in range(50)]  # many epochs of its shard, no end, no hang
    assert all(b.shape == (4, 16) for b in batches)


def test_targets_are_inputs_shifted_by_one(tmp_path: Path) -> None:
    source = local_source(write_jsonl(tmp_path / "a.jsonl", range(30)))
    x, y = next(StreamingLoader(spec([source]), 3))
    assert x.shape == y.shape == (3, 16) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])


def test_seed_shuffles_the_order(tmp_path: Path) -> None:
    source = local_source(write_txt_dir(tmp_path / "corpus", 6, docs_per_file=10))
    firsts = [BlockStream(spec([source], seed=seed), 0, 1).next_block().tolist() for seed in (1, 1, 2)]
    assert firsts[0] == firsts[1] != firsts[2]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_twice_mid_stream_sees_the_uninterrupted_batches(tmp_path: Path, num_workers: int) -> None:
    write_txt_dir(tmp_path / "corpus", 5, docs_per_file=9)
    write_parquet(tmp_path / "corpus" / "extra.parquet", range(1000, 1030))
    source = local_source(tmp_path / "corpus/*.txt")

    def loader() -> StreamingLoader:
        return StreamingLoader(spec([source], shuffle_blocks=5, tokenize_batch=3), 3, 1, 0, 1, num_workers)

    def take(it: StreamingLoader, n: int) -> list[torch.Tensor]:
        return [torch.cat(next(it), dim=1) for _ in range(n)]

    expected = take(loader(), 60)  # several epochs of the corpus
    first = loader()
    got = take(first, 7)
    second = loader()
    second.load_state_dict(first.state_dict())
    got += take(second, 24)
    third = loader()
    third.load_state_dict(torch_roundtrip(second.state_dict(), tmp_path))
    got += take(third, 29)
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))


def torch_roundtrip(state: dict, tmp_path: Path) -> dict:
    """The state as a checkpoint stores it: torch.save into rank_<r>.pt and back."""
    torch.save({"data": state}, tmp_path / "rank_0.pt")
    return torch.load(tmp_path / "rank_0.pt", weights_only=False)["data"]


def test_resume_with_another_worker_count_fails_clearly(tmp_path: Path) -> None:
    from gptforge.errors import DataError

    source = local_source(write_jsonl(tmp_path / "a.jsonl", range(30)))
    state = StreamingLoader(spec([source]), 2, num_workers=0).state_dict()
    with pytest.raises(DataError, match=r"data.num_workers=0; this run has 1 and 2"):
        StreamingLoader(spec([source]), 2, num_workers=2).load_state_dict(state)


def test_mixture_follows_its_weights_deterministically(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text('{"text": "aaaaaaaaaaaaaaaaaaa"}\n' * 40)
    (tmp_path / "b.jsonl").write_text('{"text": "bbbbbbbbbbbbbbbbbbb"}\n' * 40)
    sources = [local_source(tmp_path / "a.jsonl"), local_source(tmp_path / "b.jsonl")]

    def first_bytes(seed: int) -> list[int]:
        stream = BlockStream(spec(sources, block_len=8, weights=[0.7, 0.3], seed=seed), 0, 1)
        blocks = [stream.next_block() for _ in range(10_000)]
        return [
            int(block[block < 256][0]) for block in blocks
        ]  # every block holds a letter before or after EOS

    picks = first_bytes(5)
    assert abs(picks.count(ord("a")) / len(picks) - 0.7) < 0.02
    assert picks == first_bytes(5) != first_bytes(6)
