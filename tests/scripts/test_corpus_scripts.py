"""Every tool that reads a corpus reads it alike: train.py, train_tokenizer.py and prepare_data.py take the
same options (source code as text, one default document unit), and every script's --help shows defaults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import ROOT, TINY, compose_config, run_script

from gptforge.config import DataConfig
from gptforge.data.sources import TextOptions

SOURCE_CODE = ROOT / "src" / "data"  # real Python files, none of them a known data suffix
SCRIPTS = sorted(p.name for p in (ROOT / "scripts").glob("*.py"))


def test_one_default_document_unit_everywhere() -> None:
    units = {
        "schema": DataConfig().text_unit,
        "reader": TextOptions().text_unit,
        "data=local": compose_config(["data=local"]).data.text_unit,
        "data=mixture": compose_config(["data=mixture"]).data.text_unit,
    }
    for script in ("train_tokenizer.py", "prepare_data.py"):
        help_text = " ".join(run_script(script, "--help").stdout.split())
        units[script] = help_text.split("--text-unit TEXT_UNIT")[-1].split("(default: ")[1].split(")")[0]
    assert set(units.values()) == {"paragraph"}, units


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_scripts_help_shows_its_defaults(script: str) -> None:
    result = run_script(script, *(["train", "--help"] if script == "benchmark.py" else ["--help"]))
    assert result.returncode == 0, result.stderr
    assert "default" in result.stdout.lower(), result.stdout


def test_source_code_is_read_as_text_by_every_corpus_tool(tmp_path: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    for path in SOURCE_CODE.glob("*.py"):
        (code / path.name).write_text(path.read_text())
    options = ["--text-suffixes", ".py", "--text-unit", "document"]

    refused = run_script("train_tokenizer.py", "--input", str(code), "--out", str(tmp_path / "no"))
    assert refused.returncode == 2 and "--text-suffixes" in refused.stderr

    tokenizer = run_script(
        "train_tokenizer.py",
        "--input",
        str(code),
        "--out",
        str(tmp_path / "tok"),
        "--vocab-size",
        "400",
        *options,
    )
    assert tokenizer.returncode == 0, tokenizer.stderr
    prepared = run_script(
        "prepare_data.py",
        "--input",
        str(code),
        "--out",
        str(tmp_path / "shards"),
        "--quiet",
        "--workers",
        "1",
    )
    assert prepared.returncode == 2 and "data.text_suffixes" in prepared.stderr
    prepared = run_script(
        "prepare_data.py",
        *("--input", str(code), "--out", str(tmp_path / "shards"), "--quiet", "--workers", "1", *options),
        *("--tokenizer", "bpe", "--tokenizer-path", str(tmp_path / "tok" / "tokenizer.json")),
    )
    assert prepared.returncode == 0, prepared.stderr
    files = len(list(code.glob("*.py")))
    assert json.loads((tmp_path / "shards" / "metadata.json").read_text())["num_documents"] == files

    run_dir = tmp_path / "run"
    overrides = [
        *TINY,
        "data=local",
        f"data.path={code}",
        "data.text_suffixes=[.py]",
        "data.text_unit=document",
    ]
    overrides += [
        "data.num_workers=0",
        "data.val_fraction=0.2",
        "trainer.max_steps=2",
        "scheduler.warmup_steps=1",
    ]
    trained = run_script("train.py", *overrides, "tokenizer=byte", f"out_dir={run_dir}")
    assert trained.returncode == 0, trained.stderr
    assert "(text files as documents)" in trained.stdout
    assert any(
        "val_loss" in json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
    )
