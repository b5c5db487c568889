"""Documents from local files or a hub dataset, streamed through HF `datasets` one shard at a time."""

from __future__ import annotations

import glob
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gptforge.config import DataConfig
from gptforge.errors import DataError

FORMATS_BY_SUFFIX = {
    ".txt": "text",
    ".text": "text",
    ".md": "text",
    ".jsonl": "json",
    ".json": "json",
    ".parquet": "parquet",
}


@dataclass(frozen=True)
class TextOptions:
    """How local files become documents; train.py, train_tokenizer.py and prepare_data.py share them."""

    text_format: str = "auto"  # auto (by suffix), text, json or parquet
    text_field: str = "text"  # json/parquet: the column holding each document's text
    text_unit: str = "paragraph"  # text files: paragraph, document (one per file) or line
    encoding_errors: str = "strict"  # strict or replace
    text_suffixes: tuple[str, ...] = ()  # more suffixes read as text (source code: .py, .c, ...)

    @classmethod
    def of(cls, cfg: DataConfig) -> TextOptions:
        return cls(
            cfg.text_format, cfg.text_field, cfg.text_unit, cfg.encoding_errors, tuple(cfg.text_suffixes)
        )

    @property
    def formats_by_suffix(self) -> dict[str, str]:
        return FORMATS_BY_SUFFIX | {suffix: "text" for suffix in self.text_suffixes}


def resolve_files(path: str, key: str = "data.path", options: TextOptions | None = None) -> list[Path]:
    """The data files a path names: one file, every data file under a directory (by suffix: the known
    ones and `text_suffixes`), or a glob's matches."""
    suffixes = (options or TextOptions()).formats_by_suffix
    if any(ch in path for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(path, recursive=True) if Path(p).is_file())
        if not files:
            raise DataError(f"{key}={path}: the glob matches no files")
    elif Path(path).is_dir():
        files = sorted(p for p in Path(path).rglob("*") if p.is_file() and p.suffix in suffixes)
        if not files:
            raise DataError(
                f"{key}={path}: the directory holds no data files ({', '.join(suffixes)}); "
                "name other suffixes to read as text with data.text_suffixes (--text-suffixes), e.g. [.py]"
            )
    elif Path(path).is_file():
        files = [Path(path)]
    else:
        raise DataError(f"{key}={path} does not exist; give a file, a directory or a glob")
    for file in files:
        if file.stat().st_size == 0:
            raise DataError(f"{file} is empty; remove it or give it text")
    return files


def detect_format(
    files: list[Path], text_format: str, key: str = "data.path", options: TextOptions | None = None
) -> str:
    """The `datasets` builder for the files: `text_format`, or the one their suffixes agree on."""
    if text_format != "auto":
        return text_format
    suffixes = (options or TextOptions()).formats_by_suffix
    formats = {suffixes.get(f.suffix) for f in files}
    if None in formats:
        odd = next(f for f in files if f.suffix not in suffixes)
        raise DataError(
            f"{odd}: unknown file type; set data.text_format (--text-format) to text, json or parquet, or "
            f"data.text_suffixes=[{odd.suffix or '.<suffix>'}] (--text-suffixes) to read such files as text"
        )
    if len(formats) > 1:
        raise DataError(
            f"{key} mixes {', '.join(sorted(formats))} files; set data.text_format or use data=mixture"
        )
    return formats.pop()


@dataclass
class DocumentSource:
    """A streaming `datasets.IterableDataset` whose shards (one per local file) are read independently."""

    label: str  # the path or hub name, for messages
    dataset: object  # datasets.IterableDataset
    files: list[Path] | None  # the file behind each shard, when local
    text_field: str
    text_format: str

    @property
    def n_units(self) -> int:
        return self.dataset.n_shards

    def unit_name(self, unit: int) -> str:
        return str(self.files[unit]) if self.files else f"{self.label} shard {unit}"

    def row_location(self, unit: int, row: int) -> str:
        """`file:line` of row `row` of shard `unit` for a .jsonl file (blank lines hold no row), else
        `<shard> row N`: where a message about one example points."""
        name = self.unit_name(unit)
        if self.files and self.files[unit].suffix == ".jsonl":
            with open(self.files[unit], encoding="utf-8", errors="replace") as lines:
                numbers = (number for number, line in enumerate(lines, 1) if line.strip())
                number = next(itertools.islice(numbers, row, None), None)
            if number is not None:
                return f"{name}:{number}"
        return f"{name} row {row + 1}"

    def batches(self, unit: int, skip: int = 0) -> Iterator[dict[str, list]]:
        """Column batches of shard `unit` from its `skip`-th row on; a read failure is one DataError."""
        shard = self.dataset.shard(num_shards=self.n_units, index=unit)
        if skip:
            shard = shard.skip(skip)
        # .iter(), not iter(): inside a DataLoader worker, iter() would split shards among workers itself
        batches = shard.iter(batch_size=READ_BATCH)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except DataError:
                raise
            except Exception as err:
                raise self._diagnose(unit, err) from None
            yield batch

    def documents(self, unit: int, skip: int = 0) -> Iterator[str]:
        """The texts of shard `unit` from its `skip`-th document on; None or missing text reads as ''."""
        for batch in self.batches(unit, skip):
            texts = batch.get(self.text_field, _MISSING)
            if texts is _MISSING:
                fields = ", ".join(batch) or "none"
                raise DataError(
                    f"{self.unit_name(unit)}: no field {self.text_field!r} (data.text_field); "
                    f"its fields: {fields}"
                )
            for text in texts:
                if text is not None and not isinstance(text, str):
                    raise DataError(
                        f"{self.unit_name(unit)}: field {self.text_field!r} holds {type(text).__name__}, "
                        "not text"
                    )
                yield text or ""

    def _diagnose(self, unit: int, err: Exception) -> DataError:
        name = self.unit_name(unit)
        if isinstance(err, UnicodeDecodeError) or "utf" in str(err).lower():
            return DataError(
                f"{name} is not valid UTF-8; convert it, or set data.encoding_errors=replace "
                "to decode it with U+FFFD"
            )
        if self.files and self.text_format == "json":
            with open(self.files[unit], encoding="utf-8", errors="replace") as lines:
                for line_number, line in enumerate(lines, 1):
                    try:
                        if line.strip():
                            json.loads(line)
                    except json.JSONDecodeError as bad:
                        return DataError(
                            f"{name}:{line_number} is not valid JSON ({bad.msg}); "
                            "each line of a JSON Lines file must be one JSON object"
                        )
        return DataError(f"{name} could not be read as {self.text_format}: {str(err).splitlines()[0]}")


_MISSING = object()
READ_BATCH = 64  # documents per read from the shard
# the JSON builder logs a parse failure before raising it; `DocumentSource` reports it as one DataError
_BUILDER_LOGGERS = ("datasets.packaged_modules.json.json",)


def _quiet_datasets() -> None:
    import logging

    import datasets

    datasets.disable_progress_bars()
    for name in _BUILDER_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)


def open_local(path: str, options: TextOptions | None = None, key: str = "data.path") -> DocumentSource:
    """Stream the files `path` names (file, directory or glob) as one source, one shard per file."""
    import datasets

    options = options or TextOptions()
    _quiet_datasets()
    files = resolve_files(path, key, options)
    builder = detect_format(files, options.text_format, key, options)
    builder_options: dict = {}
    if builder == "text":
        builder_options = {"sample_by": options.text_unit, "encoding_errors": options.encoding_errors}
    elif builder == "json":
        builder_options = {"encoding_errors": options.encoding_errors}
    try:
        dataset = datasets.load_dataset(
            builder, data_files=[str(f) for f in files], split="train", streaming=True, **builder_options
        )
    except Exception as err:
        raise DataError(f"{key}={path}: could not open as {builder}: {str(err).splitlines()[0]}") from None
    shard_files = files if dataset.n_shards == len(files) else None
    return DocumentSource(path, dataset, shard_files, options.text_field, builder)


def open_hub(
    name: str, split: str, text_field: str, subset: str | None = None, key: str = "data.name"
) -> DocumentSource:
    """Stream split `split` of hub dataset `name` (its configuration `subset`, if it has several; or a local
    dataset directory): no download up front."""
    import datasets

    _quiet_datasets()
    try:
        dataset = datasets.load_dataset(name, subset, split=split, streaming=True)
    except Exception as err:
        raise DataError(
            f"{key}={name} (split {split}): could not open it ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else 'no detail'})"
        ) from None
    label = f"{name}/{subset}[{split}]" if subset else f"{name}[{split}]"
    return DocumentSource(label, dataset, None, text_field, "hub")
