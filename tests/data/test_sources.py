"""Sources: text, JSON Lines, Parquet streamed through datasets; a one-line error for each bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from data_helpers import doc, local_source, write_jsonl, write_parquet, write_txt_dir

from gptforge.config import DataConfig
from gptforge.data import BatchLayout, build_data
from gptforge.data.sources import open_hub
from gptforge.data.tokenizers import ByteTokenizer
from gptforge.errors import DataError


def documents(source) -> list[str]:
    return [t for unit in range(source.n_units) for t in source.documents(unit)]


@pytest.mark.parametrize("unit", ["document", "paragraph", "line"])
def test_text_files_split_into_documents_as_configured(tmp_path: Path, unit: str) -> None:
    (tmp_path / "a.txt").write_text("one\ntwo\n\nthree\n")
    texts = [t.strip() for t in documents(local_source(tmp_path / "a.txt", unit)) if t.strip()]
    expected = {"document": ["one\ntwo\n\nthree"], "paragraph": ["one\ntwo", "three"]}
    assert texts == expected.get(unit, ["one", "two", "three"])


def test_jsonl_parquet_and_a_directory_of_many_small_files(tmp_path: Path) -> None:
    assert documents(local_source(write_jsonl(tmp_path / "a.jsonl", range(5)))) == [doc(i) for i in range(5)]
    assert documents(local_source(write_parquet(tmp_path / "p.parquet", range(30)))) == [
        doc(i) for i in range(30)
    ]
    many = local_source(write_txt_dir(tmp_path / "many", 1000, docs_per_file=1))
    assert many.n_units == 1000 and documents(many)[-1].strip() == doc(999).strip()


def test_hub_path_reads_a_local_dataset_directory(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "train.jsonl", range(12))
    assert documents(open_hub(str(tmp_path), "train", "text")) == [doc(i) for i in range(12)]


def build(tmp_path: Path, **data) -> None:
    cfg = DataConfig(**{"source": "local", "val_fraction": 0.0, **data})
    loader, _ = build_data(cfg, ByteTokenizer(), BatchLayout(block_size=8, micro_batch_size=2))
    next(loader)


def test_missing_path_and_empty_glob(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data.path=.*nothing.txt does not exist"):
        build(tmp_path, path=str(tmp_path / "nothing.txt"))
    with pytest.raises(DataError, match=r"data.path=.*\*.jsonl: the glob matches no files"):
        build(tmp_path, path=str(tmp_path / "*.jsonl"))


def test_empty_file_and_all_empty_documents(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match=r"empty.txt is empty"):
        build(tmp_path, path=str(tmp_path / "empty.txt"))
    (tmp_path / "blank.txt").write_text("\n\n   \n\n")
    with pytest.raises(DataError, match=r"blank.txt holds only empty documents"):
        build(tmp_path, path=str(tmp_path / "blank.txt"), text_unit="paragraph")


def test_invalid_utf8_is_an_error_unless_replace_is_chosen(tmp_path: Path) -> None:
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1.txt is not valid UTF-8.*data.encoding_errors=replace"):
        build(tmp_path, path=str(tmp_path / "latin1.txt"))
    build(tmp_path, path=str(tmp_path / "latin1.txt"), encoding_errors="replace")


def test_bad_json_line_is_named_by_file_and_line(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "a.jsonl", range(3))
    with open(tmp_path / "a.jsonl", "a") as f:
        f.write('{"text": "fine"}\n{"text": oops}\n')
    with pytest.raises(DataError, match=r"a.jsonl:5 is not valid JSON"):
        build(tmp_path, path=str(tmp_path / "a.jsonl"))


def test_missing_text_field_names_the_key_and_the_fields(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "a.jsonl", range(3))
    with pytest.raises(
        DataError, match=r"a.jsonl: no field 'body' \(data.text_field\); its fields: text, id"
    ):
        build(tmp_path, path=str(tmp_path / "a.jsonl"), text_field="body")
