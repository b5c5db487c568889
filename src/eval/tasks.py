"""Downstream tasks: multiple-choice and generative examples from JSONL/parquet files or a hub dataset.

A multiple-choice example is a context, candidate continuations and the index of the right one; a
generative example is a prompt and one or more reference answers. A task YAML (`TaskConfig`) says where
the examples are and which fields hold what; a data file in the default fields needs no YAML. Files and
hub datasets are read through the same `datasets` path as training data (`gptforge.data.sources`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from gptforge.config import DataConfig
from gptforge.data.sources import DocumentSource, TextOptions, open_hub, open_local
from gptforge.data.stream import held_out
from gptforge.errors import ConfigError, DataError

HUB_PREFIX = "hf:"
SFT_VAL = "sft_val"  # the validation examples of the run's data=sft config, as a generative task
TASK_KINDS = ("auto", "multiple_choice", "generative")
YAML_SUFFIXES = (".yaml", ".yml")


@dataclass
class TaskConfig:
    """One task, as a task YAML sets it: where its examples are, which fields hold what, how prompts look."""

    name: str | None = None  # in metric names (eval/<name>/acc); None: the YAML's or data file's stem
    kind: str = "auto"  # multiple_choice | generative | auto: multiple_choice where the choices field exists
    path: str | None = None  # JSONL/parquet file, directory or glob; relative to the task YAML
    hub: str | None = None  # HF dataset name instead of path (needs the network unless cached)
    subset: str | None = None  # hub: the dataset's configuration, where it has several
    split: str = "validation"  # hub: the split scored
    fewshot_path: str | None = (
        None  # k-shot examples from this file; None (and no fewshot_split): the task's own
    )
    fewshot_split: str | None = None  # hub: the split k-shot examples come from (e.g. train)
    context_field: str = "context"  # multiple_choice: the text the choices continue
    choices_field: str = "choices"  # multiple_choice: a list of candidate continuations
    gold_field: str = "gold"  # multiple_choice: the right choice, as its index (int or digit string) or text
    prompt_field: str = "prompt"  # generative: the text the answer continues
    references_field: str = "references"  # generative: the right answer, a string or a list of strings
    num_fewshot: int = 0  # solved examples before each prompt (eval.num_fewshot overrides)
    target_delimiter: str = " "  # between a context and its continuation (lm-evaluation-harness's default)
    fewshot_delimiter: str = "\n\n"  # after each k-shot example (lm-evaluation-harness's default)
    max_new_tokens: int | None = None  # generative: greedy tokens per answer; None: block_size // 2, <= 256
    stop: list[str] | None = (
        None  # generative: strings that end an answer; None: [fewshot_delimiter]; EOS ends too
    )

    def __post_init__(self) -> None:
        where = f"task {self.name}" if self.name else "a task"
        if self.kind not in TASK_KINDS:
            raise ConfigError(
                f"{where}: kind={self.kind!r} is not valid; choose one of: {', '.join(TASK_KINDS)}"
            )
        if (self.path is None) == (self.hub is None):
            raise ConfigError(f"{where}: give exactly one of path (local files) or hub (a dataset name)")
        if self.num_fewshot < 0:
            raise ConfigError(f"{where}: num_fewshot={self.num_fewshot} is not valid; it must be >= 0")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ConfigError(f"{where}: max_new_tokens={self.max_new_tokens} is not valid; it must be >= 1")

    @property
    def stop_strings(self) -> list[str]:
        return list(self.stop) if self.stop is not None else [self.fewshot_delimiter]


@dataclass(frozen=True)
class Row:
    """Where an example came from; prints as `file:line` (JSONL) or `<file or shard> row N` in messages."""

    source: DocumentSource
    unit: int
    index: int

    def __str__(self) -> str:
        return self.source.row_location(self.unit, self.index)


class ChoiceExample(NamedTuple):
    """A multiple-choice example: the context, its candidate continuations, the index of the right one."""

    context: str
    choices: list[str]
    gold: int
    row: Row


class AnswerExample(NamedTuple):
    """A generative example: the prompt and the answers that count as right."""

    prompt: str
    references: list[str]
    row: Row


Example = ChoiceExample | AnswerExample
RowFilter = Callable[[int, int], bool]  # (shard, row) -> keep


@dataclass
class Task:
    """A loaded task: its examples, and the pool its k-shot examples come from (None: its own examples)."""

    name: str
    kind: str
    config: TaskConfig
    examples: list[Example]
    fewshot_pool: list[Example] | None = field(default=None)


def task_config(entry: str, data: DataConfig | None = None) -> tuple[TaskConfig, RowFilter | None]:
    """The task an `eval.tasks` entry names: a task YAML, a data file, `hf:<dataset>` or `sft_val`."""
    if entry == SFT_VAL:
        return _sft_val_config(data)
    if entry.startswith(HUB_PREFIX):
        return TaskConfig(hub=entry.removeprefix(HUB_PREFIX)), None
    if Path(entry).suffix in YAML_SUFFIXES:
        return read_task_yaml(Path(entry)), None
    return TaskConfig(path=entry), None


def read_task_yaml(path: Path) -> TaskConfig:
    """A task YAML validated by `TaskConfig`; its relative paths are taken from the YAML's directory."""
    if not path.is_file():
        raise ConfigError(f"task file {path} does not exist")
    try:
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TaskConfig), OmegaConf.load(path)))
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        message = str(getattr(err, "msg", None) or err).splitlines()[0]
        if "not in struct" in message or "Key '" in message:
            message = f"unknown key; valid keys: {', '.join(TaskConfig.__dataclass_fields__)}"
        raise ConfigError(f"task file {path}: {key}: {message}") from None
    except ConfigError as err:
        raise ConfigError(f"task file {path}: {err}") from None
    for key in ("path", "fewshot_path"):
        value = getattr(cfg, key)
        if value is not None and not Path(value).is_absolute():
            setattr(cfg, key, str(path.parent / value))
    cfg.name = cfg.name or path.stem
    return cfg


def _sft_val_config(data: DataConfig | None) -> tuple[TaskConfig, RowFilter | None]:
    if data is None or data.source != "sft":
        raise ConfigError(
            f"eval.tasks=[{SFT_VAL}] scores the validation examples of a data=sft run, but this run's data "
            "is not data=sft; name a task file instead"
        )
    cfg = TaskConfig(
        name=SFT_VAL,
        kind="generative",
        path=data.val_path or data.path,
        prompt_field=data.prompt_field,
        references_field=data.response_field,
        target_delimiter="",  # an SFT prompt ends where its response starts
        stop=[],  # fine-tuned responses end with EOS
    )
    if data.val_path is not None:
        return cfg, None
    if not data.val_fraction:
        raise ConfigError(
            f"eval.tasks=[{SFT_VAL}]: data.val_fraction=0 and no data.val_path, so the run has no "
            "validation examples; set one of them"
        )
    fraction = data.val_fraction
    return cfg, lambda unit, row: held_out(unit, row, fraction)  # the training loader's own split


def load_task(cfg: TaskConfig, limit: int | None = None, keep: RowFilter | None = None) -> Task:
    """The examples of a task (its first `limit`, of those `keep` accepts), validated; one-line errors."""
    source = _open(cfg, cfg.path, cfg.split, "path")
    rows = _rows(source, keep)
    first = next(rows, None)
    if first is None:
        raise DataError(f"{source.label}: holds no examples; a task needs at least one")
    kind = _kind(cfg, *first)
    examples = _examples(cfg, kind, _chain(first, rows), limit)
    pool = None
    if cfg.fewshot_path is not None or cfg.fewshot_split is not None:
        fewshot_source = _open(cfg, cfg.fewshot_path, cfg.fewshot_split or cfg.split, "fewshot_path")
        pool = _examples(cfg, kind, _rows(fewshot_source, None), None)
        if not pool:
            raise DataError(f"{fewshot_source.label}: holds no examples to draw k-shot examples from")
    return Task(cfg.name or _default_name(cfg), kind, cfg, examples, pool)


def _open(cfg: TaskConfig, path: str | None, split: str, key: str) -> DocumentSource:
    """A local or hub source of rows; its `text_field` is unused (rows are read whole)."""
    where = f"task {cfg.name or _default_name(cfg)}: {key}"
    if cfg.hub is not None:
        return open_hub(cfg.hub, split, cfg.context_field, cfg.subset, key=f"task {cfg.name or cfg.hub}: hub")
    return open_local(path, TextOptions(text_field=cfg.context_field, text_unit="document"), key=where)


def _default_name(cfg: TaskConfig) -> str:
    if cfg.hub is not None:
        name = cfg.hub.rsplit("/", 1)[-1]
        return f"{name}_{cfg.subset}" if cfg.subset else name
    return Path(cfg.path.rstrip("/")).stem.replace("*", "") or "task"


def _rows(source: DocumentSource, keep: RowFilter | None) -> Iterator[tuple[Row, dict]]:
    for unit in range(source.n_units):
        index = 0
        for batch in source.batches(unit):
            n_rows = len(next(iter(batch.values()), []))
            for i in range(n_rows):
                if keep is None or keep(unit, index + i):
                    yield Row(source, unit, index + i), {name: column[i] for name, column in batch.items()}
            index += n_rows


def _chain(first: tuple[Row, dict], rest: Iterator[tuple[Row, dict]]) -> Iterator[tuple[Row, dict]]:
    yield first
    yield from rest


def _kind(cfg: TaskConfig, row: Row, values: dict) -> str:
    if cfg.kind != "auto":
        return cfg.kind
    if values.get(cfg.choices_field) is not None:
        return "multiple_choice"
    if values.get(cfg.prompt_field) is not None:
        return "generative"
    raise DataError(
        f"{row}: neither field {cfg.choices_field!r} (multiple choice) nor {cfg.prompt_field!r} "
        "(generative); "
        f"its fields: {_fields(values)}; name them in a task YAML (choices_field, prompt_field, ...)"
    )


def _examples(cfg: TaskConfig, kind: str, rows: Iterator[tuple[Row, dict]], limit: int | None) -> list:
    parse = _choice_example if kind == "multiple_choice" else _answer_example
    examples = []
    for row, values in rows:
        if limit is not None and len(examples) == limit:
            break
        examples.append(parse(cfg, row, values))
    return examples


def _choice_example(cfg: TaskConfig, row: Row, values: dict) -> ChoiceExample:
    context = _text(row, values, cfg.context_field, "context_field")
    choices = _texts(row, values, cfg.choices_field, "choices_field")
    if len(choices) < 2:
        raise DataError(f"{row}: field {cfg.choices_field!r} holds {len(choices)} choice(s); give at least 2")
    gold = _gold(row, values, cfg.gold_field, choices)
    return ChoiceExample(context, choices, gold, row)


def _answer_example(cfg: TaskConfig, row: Row, values: dict) -> AnswerExample:
    prompt = _text(row, values, cfg.prompt_field, "prompt_field")
    references = _texts(row, values, cfg.references_field, "references_field")
    if not references:
        raise DataError(f"{row}: field {cfg.references_field!r} is empty; give at least one reference answer")
    return AnswerExample(prompt, references, row)


def _value(row: Row, values: dict, name: str, key: str) -> object:
    value = values.get(name)
    if value is None:
        raise DataError(f"{row}: no field {name!r} (task key {key}); its fields: {_fields(values)}")
    return value


def _text(row: Row, values: dict, name: str, key: str) -> str:
    value = _value(row, values, name, key)
    if not isinstance(value, str):
        raise DataError(f"{row}: field {name!r} holds {type(value).__name__}, not text")
    return value


def _texts(row: Row, values: dict, name: str, key: str) -> list[str]:
    """A list of strings; one string is a list of one."""
    value = _value(row, values, name, key)
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise DataError(f"{row}: field {name!r} holds {type(value).__name__}; give a list of strings")
    return items


def _gold(row: Row, values: dict, name: str, choices: list[str]) -> int:
    value = _value(row, values, name, "gold_field")
    if isinstance(value, str) and value not in choices and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, str):
        if value not in choices:
            raise DataError(f"{row}: field {name!r} is {value!r}, neither an index nor one of the choices")
        return choices.index(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(f"{row}: field {name!r} holds {type(value).__name__}; give the right choice's index")
    if not 0 <= value < len(choices):
        raise DataError(
            f"{row}: field {name!r} is {value}, out of range for {len(choices)} choices "
            f"(0..{len(choices) - 1})"
        )
    return value


def _fields(values: dict) -> str:
    return ", ".join(name for name, value in values.items() if value is not None) or "none"
