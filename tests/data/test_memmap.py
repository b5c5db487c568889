"""Pre-tokenized shards: prepare_data.py writes them with metadata; data=memmap reads and checks them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_script
from data_helpers import doc, write_jsonl

from gptforge.config import DataConfig, TokenizerConfig
from gptforge.data import BatchLayout, RandomWindowLoader, build_data, build_tokenizer
from gptforge.data.memmap import open_shards, verify_checksums, write_shards
from gptforge.data.tokenizers import ByteTokenizer, CharTokenizer
from gptforge.errors import DataError


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    corpus = tmp_path_factory.mktemp("corpus")
    for part in range(3):
        write_jsonl(corpus / f"part{part}.jsonl", range(part * 40, (part + 1) * 40))
    out = corpus.parent / "prepared"
    args = ["--input", str(corpus), "--out", str(out), "--tokenizer", "byte", "--workers", "2"]
    result = run_script("prepare_data.py", *args, "--shard-tokens", "1000", "--quiet")
    assert result.returncode == 0, result.stderr
    return out


def test_shards_hold_every_document_with_eos_and_metadata(prepared: Path) -> None:
    metadata = json.loads((prepared / "metadata.json").read_text())
    assert metadata["dtype"] == "uint16" and metadata["num_documents"] == 120
    assert metadata["tokenizer"]["name"] == "byte" and metadata["tokenizer"]["vocab_size"] == 257
    assert len(metadata["shards"]) > 1 and metadata["checksum"]
    tokens = np.concatenate(open_shards(prepared, ByteTokenizer())).tolist()
    assert metadata["num_tokens"] == len(tokens)
    expected = [t for i in range(120) for t in [*doc(i).encode(), 256]]
    assert tokens == expected
    verify_checksums(prepared)


def test_prepare_refuses_to_write_over_an_existing_directory(prepared: Path) -> None:
    before = sorted(p.name for p in prepared.iterdir())
    result = run_script("prepare_data.py", "--input", str(prepared), "--out", str(prepared), "--quiet")
    assert (
        result.returncode == 2
        and "error: " in result.stderr
        and sorted(p.name for p in prepared.iterdir()) == before
    )


def test_large_vocabularies_use_uint32(tmp_path: Path) -> None:
    big = CharTokenizer([chr(0x10000 + i) for i in range(70_000)])
    write_shards(tmp_path / "big", [(np.array([69_999, big.eos_id], dtype=np.uint32), 1)], big)
    assert json.loads((tmp_path / "big" / "metadata.json").read_text())["dtype"] == "uint32"
    assert open_shards(tmp_path / "big", big)[0].tolist() == [69_999, 70_000]


def test_metadata_that_does_not_match_the_tokenizer_fails(prepared: Path) -> None:
    char = build_tokenizer(TokenizerConfig(name="char"), "abc")
    with pytest.raises(DataError, match=r"metadata.json: prepared with tokenizer name 'byte'.*'char'"):
        open_shards(prepared, char)


@pytest.mark.parametrize("sampling", ["random", "sequential"])
def test_memmap_loader_resumes_exactly(prepared: Path, sampling: str) -> None:
    cfg = DataConfig(source="memmap", path=str(prepared), val_fraction=0.1, sampling=sampling)
    layout = BatchLayout(block_size=16, micro_batch_size=3, grad_accum_steps=2, eval_batches=2)

    def loader() -> RandomWindowLoader:
        return build_data(cfg, ByteTokenizer(), layout)[0]

    straight = loader()
    expected = [torch.cat(next(straight), dim=1) for _ in range(12)]
    first = loader()
    got = [torch.cat(next(first), dim=1) for _ in range(4)]
    resumed = loader()
    resumed.load_state_dict(first.state_dict())
    got += [torch.cat(next(resumed), dim=1) for _ in range(8)]
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
    _, make_val = build_data(cfg, ByteTokenizer(), layout)
    assert len(list(make_val())) == 2


def test_sequential_windows_walk_the_tokens_in_order() -> None:
    tokens = [np.arange(50, dtype=np.uint16), np.arange(100, 140, dtype=np.uint16)]
    loader = RandomWindowLoader(tokens, block_size=8, micro_batch_size=2, sequential=True)
    firsts = [int(row[0]) for _ in range(5) for row in next(loader)[0]]
    assert firsts == [0, 8, 16, 24, 32, 40, 100, 108, 116, 124]
