"""From the data and tokenizer configs to the trainer's data: a train loader and fresh validation batches."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gptforge.config import DataConfig, TokenizerConfig
from gptforge.data.bpe import BPETokenizer, train_bpe
from gptforge.data.corpus import load_corpus, to_token_array
from gptforge.data.loader import StreamingLoader, inputs_and_targets
from gptforge.data.memmap import open_shards, read_metadata, saved_tokenizer, split_tail
from gptforge.data.sft import open_examples
from gptforge.data.sources import DocumentSource, TextOptions, open_hub, open_local
from gptforge.data.stream import BlockStream, StreamSpec, is_blank
from gptforge.data.tokenizers import Tokenizer, build_tokenizer
from gptforge.data.windows import RandomWindowLoader
from gptforge.errors import DataError

ValBatches = Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]
STREAMING = ("local", "hf_hub", "mixture", "sft")


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


def _separate_val(cfg: DataConfig) -> bool:
    return cfg.val_split is not None if cfg.source == "hf_hub" else cfg.val_path is not None


def open_sources(cfg: DataConfig, val: bool = False) -> tuple[list[DocumentSource], list[float]]:
    """The document sources of the training set (or of the separate validation set) and their weights."""

    def local(path: str, key: str) -> DocumentSource:
        if cfg.source == "sft":
            fields = (cfg.prompt_field, cfg.response_field)
            return open_examples(path, cfg.text_format, *fields, cfg.encoding_errors, key, cfg.messages_field)
        return open_local(path, TextOptions.of(cfg), key)

    if cfg.source == "hf_hub":
        if not cfg.name:
            raise DataError(
                "data.name is not set; data=hf_hub needs a dataset name, e.g. data.name=user/corpus"
            )
        return [open_hub(cfg.name, cfg.val_split if val else cfg.split, cfg.text_field)], [1.0]
    if val:
        return [local(cfg.val_path, "data.val_path")], [1.0]
    if cfg.source == "mixture":
        if not cfg.sources:
            raise DataError("data.sources is empty; data=mixture needs a list of {path or name, weight}")
        sources = [
            open_hub(s.name, cfg.split, cfg.text_field)
            if s.name
            else local(s.path, f"data.sources[{i}].path")
            for i, s in enumerate(cfg.sources)
        ]
        return sources, [s.weight for s in cfg.sources]
    return [local(cfg.path, "data.path")], [1.0]


def corpus_documents(cfg: DataConfig, with_val: bool = True) -> Iterator[str]:
    """Every document of the training corpus (and of a separate validation set, `with_val`), as text."""
    if cfg.source == "text_file":
        train_text, val_text = load_corpus(cfg)
        for text in (train_text, val_text if with_val else ""):
            yield from (paragraph for paragraph in text.split("\n\n") if paragraph.strip())
        return
    sources = open_sources(cfg)[0] + (
        open_sources(cfg, val=True)[0] if with_val and _separate_val(cfg) else []
    )
    for source in sources:
        for unit in range(source.n_units):
            for document in source.documents(unit):
                yield document if isinstance(document, str) else document.text


def describe_source(cfg: DataConfig) -> str:
    """Where the training documents come from, in a few words."""
    if cfg.source == "mixture":
        return "data.sources (" + ", ".join(s.path or s.name for s in cfg.sources) + ")"
    return f"data.name={cfg.name}" if cfg.source == "hf_hub" else f"data.path={cfg.path}"


def trains_its_tokenizer(cfg: DataConfig, tokenizer_cfg: TokenizerConfig) -> bool:
    """tokenizer=bpe without a path trains one on the corpus (prepared shards bring their own)."""
    return tokenizer_cfg.name == "bpe" and tokenizer_cfg.path is None and cfg.source != "memmap"


def train_corpus_bpe(cfg: DataConfig, tokenizer_cfg: TokenizerConfig) -> BPETokenizer:
    """A byte-level BPE of `tokenizer.vocab_size` tokens trained on the training documents, with progress."""
    print(
        f"gptforge: training a BPE tokenizer (tokenizer.vocab_size={tokenizer_cfg.vocab_size}) on "
        f"{describe_source(cfg)}",
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

    hf_tokenizer = train_bpe(
        counting(corpus_documents(cfg, with_val=False)), tokenizer_cfg.vocab_size, [tokenizer_cfg.eos_token]
    )
    tokenizer = BPETokenizer(hf_tokenizer, tokenizer_cfg.eos_token)
    print(
        f"gptforge: tokenizer trained on {counted[0]:,} documents in {time.perf_counter() - start:.1f} s: "
        f"vocabulary {tokenizer.vocab_size}",
        flush=True,
    )
    return tokenizer


def build_data_tokenizer(cfg: DataConfig, tokenizer_cfg: TokenizerConfig) -> Tokenizer:
    """The configured tokenizer; `char` learns its alphabet from the corpus; prepared shards (memmap)
    bring the one they were made with when the config names none to check them against."""
    if cfg.source == "memmap" and tokenizer_cfg.path is None and tokenizer_cfg.name in ("char", "bpe"):
        prepared_with = read_metadata(Path(cfg.path))["tokenizer"]["name"]
        if prepared_with != tokenizer_cfg.name:
            raise DataError(
                f"{cfg.path} was prepared with tokenizer={prepared_with}, but "
                f"tokenizer={tokenizer_cfg.name} is configured; set tokenizer={prepared_with}"
            )
        return saved_tokenizer(Path(cfg.path))
    if tokenizer_cfg.name != "char":
        return build_tokenizer(tokenizer_cfg)
    if cfg.source == "text_file":
        train_text, val_text = load_corpus(cfg)
        return build_tokenizer(tokenizer_cfg, train_text + val_text)
    return build_tokenizer(tokenizer_cfg, corpus_documents(cfg))


def build_data(
    cfg: DataConfig, tokenizer: Tokenizer, layout: BatchLayout
) -> tuple[RandomWindowLoader | StreamingLoader, ValBatches | None]:
    """This rank's training loader and a maker of validation batches (None without validation data)."""
    if cfg.source == "text_file":
        train_text, val_text = load_corpus(cfg)
        train = to_token_array(tokenizer.encode(train_text), tokenizer.vocab_size)
        val = [to_token_array(tokenizer.encode(val_text), tokenizer.vocab_size)] if val_text else None
        _check_enough_tokens([train], layout, f"data.path={cfg.path}", "give it more text")
        return _window_loader([train], layout), _window_val(val, layout)
    if cfg.source == "memmap":
        train = open_shards(Path(cfg.path), tokenizer)
        val = None
        if cfg.val_path is not None:
            val = open_shards(Path(cfg.val_path), tokenizer, "data.val_path")
        elif cfg.val_fraction:
            train, val = split_tail(train, cfg.val_fraction)
        _check_enough_tokens(train, layout, f"data.path={cfg.path}", "give it more text")
        return _window_loader(train, layout, cfg.sampling == "sequential"), _window_val(val, layout)
    return _streaming(cfg, tokenizer, layout)


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


def _streaming(cfg: DataConfig, tokenizer: Tokenizer, layout: BatchLayout):
    sources, weights = open_sources(cfg)
    for source in sources:
        _check_first_shard(source)
    separate_val = _separate_val(cfg)
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
    )
    if separate_val:
        val_sources, val_weights = open_sources(cfg, val=True)
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
