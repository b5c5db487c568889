"""Packing: EOS-joined documents cut into (T+1) blocks with nothing padded, dropped or reordered."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from data_helpers import BYTES, doc, local_source, spec, write_jsonl

from gptforge.data.packing import Packer
from gptforge.data.stream import BlockStream


def test_blocks_are_the_eos_joined_documents() -> None:
    documents = [BYTES.encode(doc(i)) for i in range(40)]
    packer = Packer(block_len=13, eos_id=BYTES.eos_id)
    blocks = np.concatenate([packer.add(documents[:15]), packer.add(documents[15:])])
    assert blocks.shape[1] == 13 and len(packer.carry) < 13
    stream = blocks.reshape(-1).tolist() + packer.carry
    assert stream == [t for ids in documents for t in [*ids, BYTES.eos_id]]


def test_unshuffled_stream_decodes_to_the_documents_in_order(tmp_path: Path) -> None:
    source = local_source(write_jsonl(tmp_path / "a.jsonl", range(25)))
    stream = BlockStream(spec([source], block_len=33, shuffle_blocks=0), 0, 1)
    tokens = np.concatenate([stream.next_block() for _ in range(12)]).tolist()
    texts = BYTES.decode([t if t != BYTES.eos_id else ord("|") for t in tokens]).split("|")
    assert texts[:-1] == [doc(i) for i in range(len(texts) - 1)] and len(texts) > 10
