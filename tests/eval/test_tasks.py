"""Task files: the formats and fields they may use, and the one-line errors for the ones they may not."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import ROOT, write_next_line_task

from gptforge.config import EvalConfig
from gptforge.data.tokenizers import ByteTokenizer
from gptforge.errors import ConfigError, DataError
from gptforge.eval.evaluator import build_task_evaluator
from gptforge.eval.prompts import choice_requests, encode_pair, fewshot_prefix
from gptforge.eval.tasks import TaskConfig, load_task, read_task_yaml

BYTES = ByteTokenizer()
QA = [{"prompt": f"Q{i}?", "references": [f"A{i}"]} for i in range(5)]


def write_jsonl(path: Path, rows: list[dict | str]) -> Path:
    lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
    path.write_text("".join(line + "\n" for line in lines))
    return path


def mc(i: int, **fields: object) -> dict:
    return {"context": f"c{i}", "choices": ["yes", "no", "maybe"], "gold": i % 3, **fields}


def test_the_default_fields_pick_the_kind_and_yaml_keys_rename_them(tmp_path: Path) -> None:
    choices = load_task(TaskConfig(path=str(write_jsonl(tmp_path / "mc.jsonl", [mc(0), mc(1)]))))
    assert (choices.name, choices.kind, choices.examples[1].gold) == ("mc", "multiple_choice", 1)
    answers = load_task(TaskConfig(path=str(write_jsonl(tmp_path / "qa.jsonl", QA))))
    assert (answers.kind, answers.examples[0].references) == ("generative", ["A0"])
    rows = [
        {"q": "2+2=", "options": ["4", "5"], "label": "0"},
        {"q": "1+1=", "options": ["3", "2"], "label": "2"},
    ]
    write_jsonl(tmp_path / "renamed.jsonl", rows)
    (tmp_path / "arith.yaml").write_text(
        "name: arith\npath: renamed.jsonl\ncontext_field: q\nchoices_field: options\ngold_field: label\n"
    )
    task = load_task(read_task_yaml(tmp_path / "arith.yaml"))  # relative to the YAML, not the cwd
    assert [(e.context, e.gold) for e in task.examples] == [
        ("2+2=", 0),
        ("1+1=", 1),
    ]  # "2" is a choice's text


def test_the_shipped_next_line_task_is_built_from_held_out_text(next_line_task: Path, tmp_path: Path) -> None:
    rebuilt = write_next_line_task(tmp_path)
    for name in ("next_line.yaml", "next_line.jsonl"):
        assert (tmp_path / name).read_text() == (next_line_task.parent / name).read_text()
    assert rebuilt.name == next_line_task.name
    text = (ROOT / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    held_out = text[int(len(text) * 0.9) :]  # data.val_fraction=0.1: the runs never train on it
    rows = [json.loads(line) for line in (tmp_path / "next_line.jsonl").read_text().splitlines()]
    assert all(row["context"] + row["choices"][row["gold"]] in held_out for row in rows)


def test_parquet_and_hub_style_dataset_directories_load_through_datasets(tmp_path: Path) -> None:
    pq.write_table(pa.Table.from_pylist([mc(0), mc(1), mc(2)]), tmp_path / "mc.parquet")
    assert len(load_task(TaskConfig(path=str(tmp_path / "mc.parquet"))).examples) == 3
    hub = tmp_path / "hub_dataset"  # what a hub dataset is on disk: a split per file name
    hub.mkdir()
    write_jsonl(hub / "train.jsonl", QA)
    write_jsonl(hub / "validation.jsonl", QA[:2])
    task = load_task(TaskConfig(hub=str(hub), split="validation", fewshot_split="train"))
    assert (len(task.examples), len(task.fewshot_pool)) == (2, 5)


def test_fewshot_prompts_are_a_seeded_draw_joined_as_lm_eval_joins_them(tmp_path: Path) -> None:
    task = load_task(TaskConfig(path=str(write_jsonl(tmp_path / "mc.jsonl", [mc(i) for i in range(6)]))))
    prefix = fewshot_prefix(task, 0, 2, seed=1234)
    assert prefix == fewshot_prefix(task, 0, 2, seed=1234) != fewshot_prefix(task, 0, 2, seed=1)
    shots = prefix.split("\n\n")[:-1]
    assert len(shots) == 2 and "c0 " not in prefix  # never the scored example itself
    assert all(shot in {f"c{i} {['yes', 'no', 'maybe'][i % 3]}" for i in range(1, 6)} for shot in shots)
    # trailing whitespace moves into the continuation; its tokens are those after the context's
    assert encode_pair(BYTES, "Q: 2+2= ", "4") == (list(b"Q: 2+2="), list(b" 4"))
    assert encode_pair(BYTES, "", "4") == ([BYTES.eos_id], list(b"4"))


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            [mc(0), {"context": "c", "choices": ["a", "b"]}],
            "bad.jsonl:2: no field 'gold' (task key gold_field)",
        ),
        ([mc(0, gold=3)], "bad.jsonl:1: field 'gold' is 3, out of range for 3 choices (0..2)"),
        (
            [mc(0, gold="perhaps")],
            "bad.jsonl:1: field 'gold' is 'perhaps', neither an index nor one of the choices",
        ),
        ([mc(0, choices="yes")], "bad.jsonl:1: field 'choices' holds 1 choice(s); give at least 2"),
        (["", mc(0, context=7)], "bad.jsonl:2: field 'context' holds int, not text"),
        (["", "  "], "bad.jsonl: holds no examples; a task needs at least one"),
        (
            [{"question": "?"}],
            "bad.jsonl:1: neither field 'choices' (multiple choice) nor 'prompt' (generative)",
        ),
        ([{"prompt": "p", "references": []}], "bad.jsonl:1: field 'references' is empty"),
    ],
)
def test_a_bad_task_file_fails_in_one_line_naming_file_line_and_field(
    tmp_path: Path, rows: list, message: str
) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError) as raised:
        build_task_evaluator(EvalConfig(tasks=[str(path)]), BYTES, block_size=32)
    assert message in str(raised.value)
    assert str(raised.value).startswith(str(tmp_path)) and "\n" not in str(raised.value)


def test_a_continuation_longer_than_the_context_window_fails_before_scoring(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "long.jsonl", [mc(0), mc(1, choices=["short", "x" * 40])])
    task = load_task(TaskConfig(path=str(path)))
    with pytest.raises(
        DataError, match=r"long.jsonl:2: choice 1 is 41 tokens, longer than the model's context window"
    ):
        choice_requests(task, BYTES, block_size=32, num_fewshot=0, seed=0)


def test_bad_task_yamls_and_settings_name_the_key(tmp_path: Path) -> None:
    (tmp_path / "typo.yaml").write_text("path: x.jsonl\ncontxt_field: q\n")
    with pytest.raises(ConfigError, match=r"typo.yaml: contxt_field: unknown key; valid keys: name, kind"):
        read_task_yaml(tmp_path / "typo.yaml")
    (tmp_path / "kind.yaml").write_text("path: x.jsonl\nkind: cloze\n")
    with pytest.raises(ConfigError, match=r"kind.yaml: .*kind='cloze' is not valid"):
        read_task_yaml(tmp_path / "kind.yaml")
    path = str(write_jsonl(tmp_path / "mc.jsonl", [mc(0), mc(1)]))
    with pytest.raises(ConfigError, match="num_fewshot=5 but only 1 examples to draw them from"):
        build_task_evaluator(EvalConfig(tasks=[path], num_fewshot=5), BYTES, block_size=32)
    with pytest.raises(ConfigError, match="names task 'mc' twice"):
        build_task_evaluator(EvalConfig(tasks=[path, path]), BYTES, block_size=32)
    qa = str(write_jsonl(tmp_path / "qa.jsonl", QA))
    with pytest.raises(
        ConfigError, match=r"max_new_tokens=32 leaves no room for the prompt in model.block_size=32"
    ):
        build_task_evaluator(EvalConfig(tasks=[qa], max_new_tokens=32), BYTES, block_size=32)
    with pytest.raises(
        ConfigError, match=r"eval.tasks=\[sft_val\] scores the validation examples of a data=sft"
    ):
        build_task_evaluator(EvalConfig(tasks=["sft_val"]), BYTES, block_size=32)
    with pytest.raises(DataError, match=r"task nowhere: path=nowhere.jsonl does not exist"):
        build_task_evaluator(EvalConfig(tasks=["nowhere.jsonl"]), BYTES, block_size=32)
