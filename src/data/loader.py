"""The streaming loader: this rank's packed micro-batches from one stream per DataLoader worker.

Each worker sends its stream's state along with every batch, so the loader's state is the state of
the last batch it handed out from each stream, plus which stream comes next. Nothing needs to be asked
of a worker at checkpoint time, and batches prefetched but never consumed are simply re-made.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from gptforge.data.stream import BlockStream, StreamSpec
from gptforge.errors import DataError
from gptforge.models.gpt import IGNORE_INDEX
from gptforge.preemption import ignore_preemption_signals


def _as_is(batch):
    return batch


def inputs_and_targets(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets (B, T) from blocks (B, T+1), or (B, 2, T+1) with loss flags (data=sft).

    A target whose token is not learned (a prompt token) becomes IGNORE_INDEX: the flag travels with the
    token, so it stays right at block boundaries.
    """
    if blocks.dim() == 2:
        return blocks[:, :-1], blocks[:, 1:]
    ids, learned = blocks[:, 0], blocks[:, 1]
    return ids[:, :-1], ids[:, 1:].masked_fill(learned[:, 1:] == 0, IGNORE_INDEX)


class _RankStreams(IterableDataset):
    """One rank's streams; DataLoader worker w plays stream (w + first) mod n_streams."""

    def __init__(
        self, spec: StreamSpec, micro_batch_size: int, rank: int, world_size: int, first: int, states: list
    ) -> None:
        self.spec, self.micro_batch_size = spec, micro_batch_size
        self.rank, self.world_size, self.first, self.states = rank, world_size, first, states

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int, dict]]:
        info = get_worker_info()
        per_rank = len(self.states)
        local = ((info.id if info else 0) + self.first) % per_rank
        stream = BlockStream(
            self.spec, self.rank * per_rank + local, self.world_size * per_rank, self.states[local]
        )
        while True:
            blocks = np.stack([stream.next_block() for _ in range(self.micro_batch_size)])
            yield torch.from_numpy(blocks.astype(np.int64)), local, stream.state_dict()


class StreamingLoader:
    """Yields (input_ids, targets) of shape (B, T) from this rank's disjoint streams; resumes exactly."""

    def __init__(
        self,
        spec: StreamSpec,
        micro_batch_size: int,
        grad_accum_steps: int = 1,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        self.spec = spec
        self.pin_memory = pin_memory
        self.micro_batch_size = micro_batch_size
        self.grad_accum_steps = grad_accum_steps
        self.rank, self.world_size, self.num_workers = rank, world_size, num_workers
        self._states: list[dict | None] = [None] * max(num_workers, 1)
        self._next_stream = 0
        self._batches: Iterator | None = None

    @property
    def global_batch_size(self) -> int:
        return self.micro_batch_size * self.grad_accum_steps * self.world_size

    def _start(self) -> Iterator:
        dataset = _RankStreams(
            self.spec,
            self.micro_batch_size,
            self.rank,
            self.world_size,
            self._next_stream,
            list(self._states),
        )
        if self.num_workers == 0:
            return iter(dataset)
        # workers encode in parallel already; Rust threads inside forked workers would only contend
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        # its own generator: a DataLoader draws the workers' base seed from the global torch RNG, which a
        # resume restores for dropout, so a restart mid-run would shift every later dropout mask
        generator = torch.Generator().manual_seed(self.spec.seed)
        return iter(
            DataLoader(
                dataset,
                batch_size=None,
                num_workers=self.num_workers,
                collate_fn=_as_is,
                generator=generator,
                worker_init_fn=ignore_preemption_signals,  # the main process saves, then stops them
            )
        )

    def __iter__(self) -> StreamingLoader:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._batches is None:
            self._batches = self._start()
        try:
            blocks, stream, state = next(self._batches)
        except DataError as err:  # from a worker: its message comes wrapped in the worker's traceback
            message = str(err).strip().splitlines()[-1]
            raise DataError(message.removeprefix("gptforge.errors.DataError: ")) from None
        self._states[stream] = state
        self._next_stream = (stream + 1) % len(self._states)
        inputs, targets = inputs_and_targets(blocks)
        if self.pin_memory:  # contiguous (B, T) tensors, so that the copies to the GPU do not block
            return inputs.contiguous().pin_memory(), targets.contiguous().pin_memory()
        return inputs, targets

    def state_dict(self) -> dict:
        return {
            "world_size": self.world_size,
            "num_workers": self.num_workers,
            "next_stream": self._next_stream,
            "streams": [None if s is None else dict(s) for s in self._states],
        }

    def load_state_dict(self, state: dict) -> None:
        saved = (state.get("world_size"), state.get("num_workers"))
        if saved != (self.world_size, self.num_workers) or "streams" not in state:
            raise DataError(
                f"the checkpoint's data position is for world_size={saved[0]}, data.num_workers={saved[1]}; "
                f"this run has {self.world_size} and {self.num_workers}: resume with the same layout"
            )
        self.close()
        self._states = list(state["streams"])
        self._next_stream = int(state["next_stream"])

    def close(self) -> None:
        """Stop the workers (a new iterator starts from the current state)."""
        self._batches = None
