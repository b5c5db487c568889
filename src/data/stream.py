"""One stream of packed blocks per (rank, worker): disjoint documents, shuffled by seed, resumable exactly.

A stream's state is where its current shuffle chunk began (epoch, shard, document, packing carry) plus
how many of the chunk's blocks it has emitted: a few hundred integers, restored by re-reading one chunk.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

import numpy as np

from gptforge.data.packing import ExamplePacker, Packer
from gptforge.data.sft import Example, ExampleSource, encode_examples
from gptforge.data.sources import DocumentSource
from gptforge.data.tokenizers import Tokenizer
from gptforge.errors import DataError

MIXTURE_PAGE = 1024  # source choices drawn per generator call


@dataclass
class StreamSpec:
    """What every stream of one split shares; picklable, so DataLoader workers rebuild streams from it."""

    sources: list[DocumentSource]
    weights: list[float]
    tokenizer: Tokenizer
    block_len: int  # T + 1 tokens: inputs and shifted targets
    seed: int
    split: str = "train"  # train | val: which side of the held-out fraction to read
    val_fraction: float = 0.0  # documents held out for validation; 0: none (a separate val set)
    shuffle_blocks: int = 1024  # blocks per shuffled chunk; 0: stream order
    tokenize_batch: int = 256  # documents per tokenizer call


def held_out(unit: int, doc: int, fraction: float) -> bool:
    """Whether document `doc` of shard `unit` belongs to validation: a fixed hash, the same on every rank."""
    return ((unit * 1_000_003 + doc) * 2_654_435_761) % 2**32 < fraction * 2**32


def is_blank(document: str | Example) -> bool:
    """Whether a document is empty and skipped; an example never is (its source rejects an empty response)."""
    return isinstance(document, str) and not document.strip()


class DocumentReader:
    """This stream's documents of one source, epoch after epoch; its position is (epoch, unit, doc)."""

    def __init__(
        self, spec: StreamSpec, source_index: int, stream_id: int, n_streams: int, position: list[int]
    ) -> None:
        self.spec = spec
        self.source = spec.sources[source_index]
        self.source_index = source_index
        self.stream_id, self.n_streams = stream_id, n_streams
        self.epoch, self.unit_pos, self.doc = position
        # fewer shards than streams: every stream reads every shard and keeps 1 document in n_streams
        self.stride_documents = self.source.n_units < n_streams
        self._units = self._epoch_units(self.epoch)
        self._texts: Iterator[str] | None = None
        self._whole_epoch = self.unit_pos == 0 and self.doc == 0  # checks need a whole epoch or shard
        self._whole_unit = False
        self._kept_in_epoch = 0
        self._nonempty_in_unit = 0

    @property
    def position(self) -> list[int]:
        return [self.epoch, self.unit_pos, self.doc]

    def _epoch_units(self, epoch: int) -> list[int]:
        n_units = self.source.n_units
        if self.spec.split == "train" and self.spec.shuffle_blocks:
            order = np.random.default_rng([self.spec.seed, self.source_index, epoch]).permutation(n_units)
        else:
            order = np.arange(n_units)
        if self.stride_documents:
            return order.tolist()
        return order[self.stream_id :: self.n_streams].tolist()

    def _keep(self, unit: int, doc: int) -> bool:
        if self.stride_documents and (doc + self.unit_pos) % self.n_streams != self.stream_id:
            return False
        fraction = self.spec.val_fraction
        return fraction == 0 or held_out(unit, doc, fraction) == (self.spec.split == "val")

    def _open_unit(self) -> None:
        self._whole_unit = self.doc == 0
        self._nonempty_in_unit = 0
        self._texts = self.source.documents(self._units[self.unit_pos], self.doc)

    def _next_unit(self) -> None:
        if self._whole_unit and not self._nonempty_in_unit:
            name = self.source.unit_name(self._units[self.unit_pos])
            raise DataError(f"{name} holds only empty documents; remove it or give it text")
        self.unit_pos, self.doc, self._texts = self.unit_pos + 1, 0, None
        if self.unit_pos == len(self._units):
            if self._whole_epoch and not self._kept_in_epoch:
                raise DataError(
                    f"{self.source.label}: no {self.spec.split} documents for stream {self.stream_id} of "
                    f"{self.n_streams} (ranks x workers); give it more documents or use fewer workers"
                )
            self.epoch, self.unit_pos, self._kept_in_epoch, self._whole_epoch = self.epoch + 1, 0, 0, True
            self._units = self._epoch_units(self.epoch)

    def read(self, count: int) -> list[str] | list[Example]:
        """Up to `count` of this stream's non-empty documents (fewer only where a shard ends)."""
        texts: list = []
        while not texts:
            if self._texts is None:
                self._open_unit()
            unit = self._units[self.unit_pos]
            for text in self._texts:
                doc = self.doc
                self.doc += 1
                if is_blank(text):
                    continue
                self._nonempty_in_unit += 1
                if self._keep(unit, doc):
                    texts.append(text)
                    self._kept_in_epoch += 1
                    if len(texts) == count:
                        break
            else:
                self._next_unit()
        return texts


class SourceBlocks:
    """One source's packed blocks for one stream, shuffled a chunk of `shuffle_blocks` at a time."""

    def __init__(
        self, spec: StreamSpec, source_index: int, stream_id: int, n_streams: int, state: dict | None
    ) -> None:
        state = state or {"position": [0, 0, 0], "carry": [], "chunk": 0, "emitted": 0}
        self.spec, self.source_index, self.stream_id = spec, source_index, stream_id
        self.reader = DocumentReader(spec, source_index, stream_id, n_streams, list(state["position"]))
        # prompt/response examples pack with a loss flag per token; documents are learned whole
        examples = isinstance(self.reader.source, ExampleSource)
        self.packer = (ExamplePacker if examples else Packer)(
            spec.block_len, spec.tokenizer.eos_id, state["carry"]
        )
        self.encode = partial(encode_examples, spec.tokenizer) if examples else spec.tokenizer.encode_batch
        self.chunk = state["chunk"]
        self.emitted = state["emitted"]
        self._start = {"position": list(state["position"]), "carry": list(state["carry"])}
        self._blocks: np.ndarray | None = None

    def _fill(self) -> np.ndarray:
        self._start = {"position": self.reader.position, "carry": list(self.packer.carry)}
        pieces, n_blocks = [], 0
        while n_blocks < max(self.spec.shuffle_blocks, 1):
            texts = self.reader.read(self.spec.tokenize_batch)
            blocks = self.packer.add(self.encode(texts))
            pieces.append(blocks)
            n_blocks += len(blocks)
        blocks = np.concatenate(pieces)
        if self.spec.shuffle_blocks:
            rng = np.random.default_rng([self.spec.seed, self.source_index, self.stream_id, self.chunk])
            blocks = blocks[rng.permutation(len(blocks))]
        return blocks

    def next_block(self) -> np.ndarray:
        if self._blocks is None:
            self._blocks = self._fill()
        if self.emitted == len(self._blocks):
            self.chunk, self.emitted = self.chunk + 1, 0
            self._blocks = self._fill()
        self.emitted += 1
        return self._blocks[self.emitted - 1]

    def state_dict(self) -> dict:
        return {**self._start, "chunk": self.chunk, "emitted": self.emitted}


class BlockStream:
    """Blocks of (T+1) tokens drawn from the sources by weight; deterministic given seed and stream id."""

    def __init__(self, spec: StreamSpec, stream_id: int, n_streams: int, state: dict | None = None) -> None:
        source_states = state["sources"] if state else [None] * len(spec.sources)
        self.sources = [SourceBlocks(spec, i, stream_id, n_streams, s) for i, s in enumerate(source_states)]
        self.spec, self.stream_id = spec, stream_id
        self.drawn = state["drawn"] if state else 0
        weights = np.asarray(spec.weights, dtype=np.float64)
        self.probabilities = weights / weights.sum()
        self._page: tuple[int, np.ndarray] | None = None

    def _choose(self) -> int:
        if len(self.sources) == 1:
            return 0
        page = self.drawn // MIXTURE_PAGE
        if self._page is None or self._page[0] != page:
            rng = np.random.default_rng([self.spec.seed, self.stream_id, page, 7])
            self._page = (page, rng.choice(len(self.sources), MIXTURE_PAGE, p=self.probabilities))
        return int(self._page[1][self.drawn % MIXTURE_PAGE])

    def next_block(self) -> np.ndarray:
        """The next block, shape (T+1,), int32; (2, T+1) with loss flags for prompt/response examples."""
        block = self.sources[self._choose()].next_block()
        self.drawn += 1
        return block

    def state_dict(self) -> dict:
        return {"drawn": self.drawn, "sources": [s.state_dict() for s in self.sources]}
