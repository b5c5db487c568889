"""From the data and tokenizer configs to the trainer's data: a train loader and fresh validation batches.

Each `data.source` is one `DataSource` in `DATA_SOURCES`: how it opens, whether its position is per rank
(streaming), what it says in the summary, its documents for a tokenizer to learn from, and a tokenizer
of its own where it brings one. Adding a source is one class and one registry entry.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gptforge.config import DataConfig, TokenizerConfig
from gptforge.data.corpus import load_corpus, to_token_array
from gptforge.data.loader import StreamingLoader, inputs_and_targets
from gptforge.data.memmap import open_shards, read_metadata, saved_tokenizer, split_tail
from gptforge.data.sft import open_examples
from gptforge.data.sources import DocumentSource, TextOptions, open_hub, open_local
from gptforge.data.stream import BlockStream, StreamSpec, is_blank
from gptforge.data.tokenizers import Tokenizer, build_tokenizer, tokenizer_class
from gptforge.data.windows import RandomWindowLoader
from gptforge.errors import DataError

ValBatches = Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]
Loaders = tuple[RandomWindowLoader | StreamingLoader, ValBatches | None]


@dataclass
class BatchLayout:
    """How the trainer consumes data: this rank's micro-batches of B sequences of T tokens."""

    block_size: int  # T
    micro_batch_size: int  # B
    grad_accum_steps: int = 1
    rank: int = 0
    world_size: int = 1
    seed: int = 0
    eval_batches: int = 20  # validation micro-batches per evaluation
    pin_memory: bool = False  # batches in page-locked memory, for non-blocking copies to a GPU


class DataSource:
    """One kind of training data; subclasses say how it opens and what it knows."""

    streaming = True  # a stream position per rank and worker: resumes on the same world size only
    needs_path = True  # data.path names the data
    fine_tunes = False  # prompt/response examples: a run needs trainer.init_from, and has a chat format

    def check(self, cfg: DataConfig) -> None:
        """ConfigError for settings of `cfg` this source cannot use (at composition)."""

    def describe(self, cfg: DataConfig) -> str:
        """Where the training documents come from, in one line of the run summary."""
        return f"{cfg.source}: {cfg.path} (text files as {cfg.text_unit}s)"

    def build(self, cfg: DataConfig, tokenizer: Tokenizer, layout: BatchLayout) -> Loaders:
        """This rank's training loader and a maker of validation batches (None without validation data)."""
        return _streaming(self, cfg, tokenizer, layout)

    def documents(self, cfg: DataConfig, with_val: bool = True) -> Iterator[str]:
        """Every document of the training corpus (and of a separate validation set, `with_val`), as text."""
        sources = self.open(cfg)[0] + (
            self.open(cfg, val=True)[0] if with_val and self.separate_val(cfg) else []
        )
        for source in sources:
            for unit in range(source.n_units):
                for document in source.documents(unit):
                    yield document if isinstance(document, str) else document.text

    def own_tokenizer(self, cfg: DataConfig, tokenizer_cfg: TokenizerConfig) -> Tokenizer | None:
        """A tokenizer the data brings (prepared shards), None where the configured one is built."""
        return None

    def open(self, cfg: DataConfig, val: bool = False) -> tuple[list[DocumentSource], list[float]]:
        """The document sources of the training set (or the separate validation set), and their weights."""
        if val:
            return [self.open_path(cfg, cfg.val_path, "data.val_path")], [1.0]
        return [self.open_path(cfg, cfg.path, "data.path")], [1.0]

    def open_path(self, cfg: DataConfig, path: str, key: str) -> DocumentSource:
        return open_local(path, TextOptions.of(cfg), key)

    def separate_val(self, cfg: DataConfig) -> bool:
        return cfg.val_path is not None


class InMemoryText(DataSource):
    """`text_file`: one text file held in memory, random windows over its tokens (the bundled corpus)."""

    streaming = False

    def describe(self, cfg: DataConfig) -> str:
        return f"text_file: {cfg.path}"

    def build(self, cfg: DataConfig, tokenizer: Tokenizer, layout: BatchLayout) -> Loaders:
        train_text, val_text = load_corpus(cfg)
        train = to_token_array(tokenizer.encode(train_text), tokenizer.vocab_size)
        val = [to_token_array(tokenizer.encode(val_text), tokenizer.vocab_size)] if val_text else None
        _check_enough_tokens([train], layout, f"data.path={cfg.path}", "give it more text")
        return _window_loader([train], layout), _window_val(val, layout)

    def documents(self, cfg: DataConfig, with_val: bool = True) -> Iterator[str]:
        train_text, val_text = load_corpus(cfg)
        for text in (train_text, val_text if with_val else ""):
            yield from (paragraph for paragraph in text.split("\n\n") if paragraph.strip())


class PreparedShards(DataSource):
    """`memmap`: token shards written once by scripts/prepare_data.py, memory-mapped; they bring the
    tokenizer they were made with."""

    streaming = False

    def describe(self, cfg: DataConfig) -> str:
        return f"memmap: {cfg.path}"

    def build(self, cfg: DataConfig, tokenizer: Tokenizer, layout: BatchLayout) -> Loaders:
        train = open_shards(Path(cfg.path), tokenizer)
        val = None
        if cfg.val_path is not None:
            val = open_shards(Path(cfg.val_path), tokenizer, "data.val_path")
        elif cfg.val_fraction:
            train, val = split_tail(train, cfg.val_fraction)
        _check_enough_tokens(train, layout, f"data.path={cfg.path}", "give it more text")
        return _window_loader(train, layout, cfg.sampling == "sequential"), _window_val(val, layout)

    def documents(self, cfg: DataConfig, with_val: bool = True) -> Iterator[str]:
        raise DataError(
            f"data.path={cfg.path} holds prepared tokens, not text: a tokenizer cannot learn from them; "
            "the shards bring the tokenizer they were prepared with"
        )

    def own_tokenizer(self, cfg: DataConfig, tokenizer_cfg: TokenizerConfig) -> Tokenizer | None:
        if tokenizer_cfg.path is not None or not tokenizer_class(tokenizer_cfg.name).learns_from_corpus:
            return None  # a tokenizer the config names: the shards are checked against it
        prepared_with = read_metadata(Path(cfg.path))["tokenizer"]["name"]
        if prepared_with != tokenizer_cfg.name:
            raise DataError(
                f"{cfg.path} was prepared with tokenizer={prepared_with}, but "
                f"tokenizer={tokenizer_cfg.name} is configured; set tokenizer={prepared_with}"
            )
        return saved_tokenizer(Path(cfg.path))


class LocalFiles(DataSource):
    """`local`: a file, directory or glob of text, JSON Lines or Parquet, streamed through HF datasets."""


class HubDataset(DataSource):
    """`hf_hub`: a dataset on the Hugging Face Hub (or a local dataset directory), streamed by split."""

    needs_path = False

    def describe(self, cfg: DataConfig) -> str:
        return f"hf_hub: {cfg.name} [{cfg.split}]"

    def open(self, cfg: DataConfig, val: bool = False) -> tuple[list[DocumentSource], list[float]]:
        if not cfg.name:
            raise DataError(
                "data.name is not set; data=hf_hub needs a dataset name, e.g. data.name=user/corpus"
            )
        return [open_hub(cfg.name, cfg.val_split if val else cfg.split, cfg.text_field)], [1.0]

    def separate_val(self, cfg: DataConfig) -> bool:
        return cfg.val_split is not None


class Mixture(DataSource):
    """`mixture`: several local or hub sources, each block drawn from one of them by weight."""

    needs_path = False

    def describe(self, cfg: DataConfig) -> str:
        parts = [f"{source.path or source.name} (weight {source.weight:g})" for source in cfg.sources]
        return f"mixture: {', '.join(parts)} (text files as {cfg.text_unit}s)"

    def open(self, cfg: DataConfig, val: bool = False) -> tuple[list[DocumentSource], list[float]]:
        if val:
            return super().open(cfg, val)
        if not cfg.sources:
            raise DataError("data.sources is empty; data=mixture needs a list of {path or name, weight}")
        sources = [
            open_hub(s.name, cfg.split, cfg.text_field)
            if s.name
            else self.open_path(cfg, s.path, f"data.sources[{i}].path")
            for i, s in enumerate(cfg.sources)
        ]
        return sources, [s.weight for s in cfg.sources]


class FineTuningExamples(DataSource):
    """`sft`: prompt/response pairs or chat messages, one per JSON Lines line or Parquet row."""

    fine_tunes = True

    def describe(self, cfg: DataConfig) -> str:
        return f"sft: {cfg.path}"

    def check(self, cfg: DataConfig) -> None:
        from gptforge.errors import ConfigError

        if cfg.text_format == "text":
            raise ConfigError("data.text_format=text is not valid with data=sft; use auto, json or parquet")

    def open_path(self, cfg: DataConfig, path: str, key: str) -> DocumentSource:
        fields = (cfg.prompt_field, cfg.response_field)
        return open_examples(path, cfg.text_format, *fields, cfg.encoding_errors, key, cfg.messages_field)


# data.source -> how that kind of data is read; the config's valid names are these
DATA_SOURCES: dict[str, DataSource] = {
    "text_file": InMemoryText(),
    "memmap": PreparedShards(),
    "local": LocalFiles(),
    "hf_hub": HubDataset(),
    "mixture": Mixture(),
    "sft": FineTuningExamples(),
}


def data_source(cfg: DataConfig) -> DataSource:
    return DATA_SOURCES[cfg.source]


def build_data(cfg: DataConfig, tokenizer: Tokenizer, layout: BatchLayout) -> Loaders:
    """This rank's training loader and a maker of validation batches (None without validation data)."""
    return data_source(cfg).build(cfg, tokenizer, layout)


def corpus_documents(cfg: DataConfig, with_val: bool = True) -> Iterator[str]:
    """Every document of the training corpus (and of a separate validation set, `with_val`), as text."""
    return data_source(cfg).documents(cfg, with_val)


def describe_source(cfg: DataConfig) -> str:
    """Where the training documents come from, in a few words."""
    return data_source(cfg).describe(cfg)


def trains_its_tokenizer(cfg: DataConfig, tokenizer_cfg: TokenizerConfig) -> bool:
    """Whether the run trains its tokenizer on the corpus when it starts (rank 0, then sent to all):
    a trained tokenizer without a file (bpe), unless the data brings its own (prepared shards)."""
    spec = tokenizer_class(tokenizer_cfg.name)
    return (
        spec.trained
        and tokenizer_cfg.path is None
        and data_source(cfg).own_tokenizer(cfg, tokenizer_cfg) is None
    )


def train_corpus_tokenizer(cfg: DataConfig, tokenizer_cfg: TokenizerConfig) -> Tokenizer:
    """The configured tokenizer trained on the training documents, with a line of progress now and then."""
    print(
        f"gptforge: training a {tokenizer_cfg.name} tokenizer "
        f"(tokenizer.vocab_size={tokenizer_cfg.vocab_size}) on {describe_source(cfg)}",
        flush=True,
    )
    start, counted = time.perf_counter(), [0]

    def counting(documents: Iterator[str]) -> Iterator[str]:
        last_report = start
        for document in documents:
            counted[0] += 1
            if time.perf_counter() - last_report > 10:
                last_report = time.perf_counter()
                print(f"gptforge: tokenizer training read {counted[0]:,} documents", flush=True)
            yield document

    tokenizer = build_tokenizer(tokenizer_cfg, counting(corpus_documents(cfg, with_val=False)))
    print(
        f"gptforge: tokenizer trained on {counted[0]:,} documents in {time.perf_counter() - start:.1f} s: "
        f"vocabulary {tokenizer.vocab_size}",
        flush=True,
    )
    return tokenizer


def build_data_tokenizer(cfg: DataConfig, tokenizer_cfg: TokenizerConfig) -> Tokenizer:
    """The configured tokenizer (one that learns from the corpus reads it: char's alphabet); the data's
    own where it brings one (prepared shards)."""
    own = data_source(cfg).own_tokenizer(cfg, tokenizer_cfg)
    if own is not None:
        return own
    if not tokenizer_class(tokenizer_cfg.name).learns_from_corpus or tokenizer_cfg.path is not None:
        return build_tokenizer(tokenizer_cfg)
    return build_tokenizer(tokenizer_cfg, corpus_documents(cfg))


def _check_enough_tokens(arrays: list[np.ndarray], layout: BatchLayout, what: str, remedy: str) -> None:
    """DataError naming `what` unless one array holds a window: block_size inputs plus the next token."""
    longest, needed = max((len(a) for a in arrays), default=0), layout.block_size + 2
    if longest < needed:
        raise DataError(
            f"{what} has {longest} tokens, too few for one window of model.block_size={layout.block_size} "
            f"(it needs {needed}); {remedy} or lower model.block_size"
        )


def _window_loader(arrays: list[np.ndarray], layout: BatchLayout, sequential: bool = False):
    return RandomWindowLoader(
        arrays,
        layout.block_size,
        layout.micro_batch_size,
        layout.grad_accum_steps,
        layout.rank,
        layout.world_size,
        layout.seed,
        sequential,
        layout.pin_memory,
    )


def _window_val(arrays: list[np.ndarray] | None, layout: BatchLayout) -> ValBatches | None:
    if not arrays:
        return None
    # found now, not at the first evaluation mid-run
    _check_enough_tokens(
        arrays, layout, "the validation data", "raise data.val_fraction, give data.val_path more text"
    )

    def make_val_batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        b, t = layout.micro_batch_size, layout.block_size
        loader = RandomWindowLoader(arrays, t, b, 1, layout.rank, layout.world_size, layout.seed + 1)
        return (next(loader) for _ in range(layout.eval_batches))

    return make_val_batches


def _streaming(kind: DataSource, cfg: DataConfig, tokenizer: Tokenizer, layout: BatchLayout) -> Loaders:
    sources, weights = kind.open(cfg)
    for source in sources:
        _check_first_shard(source)
    separate_val = kind.separate_val(cfg)
    spec = StreamSpec(
        sources,
        weights,
        tokenizer,
        layout.block_size + 1,
        layout.seed,
        "train",
        0.0 if separate_val else cfg.val_fraction,
        cfg.shuffle_blocks,
        cfg.tokenize_batch,
    )
    loader = StreamingLoader(
        spec,
        layout.micro_batch_size,
        layout.grad_accum_steps,
        layout.rank,
        layout.world_size,
        cfg.num_workers,
        layout.pin_memory,
    )
    if separate_val:
        val_sources, val_weights = kind.open(cfg, val=True)
        val_spec = StreamSpec(val_sources, val_weights, tokenizer, spec.block_len, layout.seed, "val", 0.0, 0)
    elif cfg.val_fraction:
        val_spec = StreamSpec(
            sources, weights, tokenizer, spec.block_len, layout.seed, "val", cfg.val_fraction, 0
        )
    else:
        return loader, None
    return loader, _stream_val(val_spec, layout)


def _check_first_shard(source: DocumentSource) -> None:
    """Read up to the first real document, so a wrong format or field fails now and in one line."""
    documents = source.documents(0)
    try:
        for text in documents:
            if not is_blank(text):
                return
    finally:
        documents.close()
    raise DataError(f"{source.unit_name(0)} holds only empty documents; remove it or give it text")


def _stream_val(spec: StreamSpec, layout: BatchLayout) -> ValBatches:
    """The same held-out blocks at every evaluation, read now: a validation split too small for this
    rank's stream fails at start, not at the first evaluation hours into the run."""
    stream = BlockStream(spec, layout.rank, layout.world_size)
    batches = []
    for _ in range(layout.eval_batches):
        blocks = np.stack([stream.next_block() for _ in range(layout.micro_batch_size)])
        batches.append(torch.from_numpy(blocks.astype(np.int64)))

    def make_val_batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return (inputs_and_targets(b) for b in batches)

    return make_val_batches
