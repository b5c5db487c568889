"""generate.py, evaluate.py and export_hf.py, run as a user runs them, on a real tiny run's checkpoint."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import transformers  # a dev dependency: installed by scripts/test.sh
from conftest import ROOT, TINY, compose_config, run_script

from gptforge.data.chat import encode_texts, render_chat
from gptforge.trainer import train
from gptforge.trainer.checkpoint import load_checkpoint

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A finished tiny run directory and its last metrics (val_loss included)."""
    root = tmp_path_factory.mktemp("run")
    text = root / "corpus.txt"
    text.write_text((ROOT / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8")[:30_000])
    cfg = compose_config([*TINY, f"out_dir={root / 'run'}", f"data.path={text}", "trainer.max_steps=20"])
    return root / "run", train(cfg)


def test_evaluate_reports_the_runs_val_loss_and_writes_json(run: tuple[Path, dict], tmp_path: Path) -> None:
    run_dir, metrics = run
    result = run_script("evaluate.py", str(run_dir), "--json", str(tmp_path / "eval.json"))
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "eval.json").read_text())
    # the same validation batches the trainer drew, so the same figure
    assert report["val_loss"] == pytest.approx(metrics["val_loss"], abs=1e-4)
    assert report["perplexity"] == pytest.approx(math.exp(report["val_loss"]))
    assert report["checkpoint"].endswith("step_20")
    assert "perplexity" in result.stdout


def test_evaluate_scores_every_token_of_a_text_file(run: tuple[Path, dict], tmp_path: Path) -> None:
    run_dir, _ = run
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 3  # longer than a block
    (tmp_path / "held_out.txt").write_text(text)
    result = run_script(
        "evaluate.py", str(run_dir), "--text", "held_out.txt", "--json", "e.json", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["tokens"] == len(text) - 1  # every character but the first is predicted once
    assert 1.0 < report["perplexity"] < 66


def test_generate_is_repeatable_under_a_seed(run: tuple[Path, dict]) -> None:
    run_dir, _ = run
    args = (str(run_dir), "--prompt", "ROMEO:", "--max-new-tokens", "40", "--top-k", "20", "--top-p", "0.95")
    first, again, other = (run_script("generate.py", *args, "--seed", seed) for seed in ("1", "1", "2"))
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("ROMEO:")
    assert first.stdout == again.stdout
    assert first.stdout != other.stdout
    # 6 + 40 tokens run past block_size=32: the window slides, and the user is told once
    (warning,) = first.stderr.splitlines()
    assert warning.startswith("warning: 6 prompt tokens + --max-new-tokens 40") and "block_size=32" in warning


def test_scripts_report_a_bad_checkpoint_in_one_line(tmp_path: Path) -> None:
    result = run_script("generate.py", str(tmp_path / "nowhere"))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "nowhere does not exist" in result.stderr


def test_export_loads_offline_in_transformers_with_our_logits_and_tokens(
    run: tuple[Path, dict], tmp_path: Path
) -> None:
    run_dir, _ = run
    out = tmp_path / "hf"
    result = run_script("export_hf.py", str(run_dir), str(out), env=OFFLINE)
    assert result.returncode == 0, result.stderr
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    ours = load_checkpoint(run_dir)
    text = "ROMEO:\nWhat light breaks?"  # within block_size=32
    ids = ours.tokenizer.encode(text)
    assert hf_tokenizer(text)["input_ids"] == ids
    assert hf_tokenizer.decode(ids) == text
    assert hf_tokenizer.eos_token_id == ours.tokenizer.eos_id == hf_model.config.eos_token_id
    with torch.no_grad():
        batch = torch.tensor([ids])
        assert (ours.model(batch)[0] - hf_model(batch).logits).abs().max().item() < 1e-5


def test_the_export_of_a_fine_tune_carries_the_chat_format(sft_run: Path, tmp_path: Path) -> None:
    result = run_script("export_hf.py", str(sft_run), str(tmp_path / "hf"), env=OFFLINE)
    assert result.returncode == 0, result.stderr
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf", local_files_only=True)
    ours = load_checkpoint(sft_run).tokenizer
    messages = [
        {"role": "user", "content": "ROMEO:\nSpeak.\n\nJULIET:\n"},
        {"role": "assistant", "content": "I will."},
        {"role": "user", "content": "\n\nROMEO:\nWhen?\n\nJULIET:\n"},
    ]
    text = render_chat(messages, ours.eos_token)
    assert hf_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == text
    ids = hf_tokenizer.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]
    assert ids == encode_texts(ours, [text])[0] and ids.count(ours.eos_id) == 1
