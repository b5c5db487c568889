"""SFT data: prompt tokens carry no loss, the mask survives packing and block boundaries, resume is exact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT, compose_config
from data_helpers import BYTES, spec

from gptforge.config import DataConfig, ModelConfig, TokenizerConfig
from gptforge.data import BatchLayout, StreamingLoader, build_data, build_data_tokenizer
from gptforge.data.chat import encode_texts, render_chat
from gptforge.data.loader import IGNORE_INDEX, inputs_and_targets
from gptforge.data.packing import ExamplePacker
from gptforge.data.sft import encode_examples, open_examples
from gptforge.data.stream import BlockStream
from gptforge.errors import ConfigError, DataError
from gptforge.models import GPT

EOS = BYTES.eos_id


def example(i: int) -> dict:
    """Prompts are lower case and commas only, responses upper case and full stops only: the byte of a token
    says which side it came from. Prompts run from empty to longer than a 17-token block."""
    letters = "abcdefghij"
    prompt = ",".join(letters[int(d)] * (1 + i % 4) for d in f"{i:03d}") * (i % 7)
    response = "." + "".join("ABCDEFGHIJ"[int(d)] for d in f"{i:03d}") * (1 + i % 3)
    return {"prompt": prompt, "response": response}


def write_examples(path: Path, ids: range) -> Path:
    path.write_text("".join(json.dumps(example(i)) + "\n" for i in ids))
    return path


def is_response(token: int) -> bool:
    return token == EOS or chr(token) in ".ABCDEFGHIJ"


def sft_data(path: Path, **overrides) -> DataConfig:
    options = {
        "source": "sft",
        "path": str(path),
        "val_fraction": 0.1,
        "shuffle_blocks": 8,
        "tokenize_batch": 5,
    }
    return DataConfig(**options | overrides)


def test_prompt_targets_are_ignored_and_every_response_target_is_kept(tmp_path: Path) -> None:
    path = write_examples(tmp_path / "sft.jsonl", range(60))
    loader, make_val_batches = build_data(
        sft_data(path), BYTES, BatchLayout(block_size=16, micro_batch_size=4)
    )
    raw = BlockStream(loader.spec, 0, 1)  # the same stream the loader plays: its blocks before masking
    starts_in_prompt = 0
    for _ in range(30):
        x, y = next(loader)
        ids = np.stack([raw.next_block() for _ in range(4)])[:, 0].tolist()  # (B, T+1)
        assert x.tolist() == [row[:-1] for row in ids]
        assert y.tolist() == [[t if is_response(t) else IGNORE_INDEX for t in row[1:]] for row in ids]
        assert (y != IGNORE_INDEX).any(dim=1).all()  # every block teaches something
        starts_in_prompt += sum(not is_response(row[0]) and not is_response(row[1]) for row in ids)
    assert starts_in_prompt > 0  # blocks that begin inside a prompt were seen, and kept it masked
    _, val_y = next(make_val_batches())
    learned = val_y[val_y != IGNORE_INDEX].tolist()
    assert learned and all(map(is_response, learned)) and (val_y == IGNORE_INDEX).any()


def test_model_loss_is_the_mean_cross_entropy_over_response_tokens_only(tmp_path: Path) -> None:
    loader, _ = build_data(
        sft_data(write_examples(tmp_path / "sft.jsonl", range(40))), BYTES, BatchLayout(16, 4)
    )
    raw = BlockStream(loader.spec, 0, 1)
    blocks = torch.from_numpy(np.stack([raw.next_block() for _ in range(4)])).long()
    unmasked = blocks[:, 0, 1:]  # the targets as plain language modelling would have them
    x, y = next(loader)
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=BYTES.vocab_size))
    logits, loss = model(x, y)
    learned = y != IGNORE_INDEX
    by_hand = -F.log_softmax(logits[learned], dim=-1).gather(1, y[learned][:, None]).mean()
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-6)
    assert torch.equal(unmasked[learned], y[learned])
    assert model(x, unmasked)[1].item() != pytest.approx(loss.item())  # the mask is what changes the loss

    logits.retain_grad()
    loss.backward()
    # prompt targets cannot move the loss: its gradient vanishes wherever the target is a prompt token
    assert logits.grad[~learned].abs().max().item() == 0.0
    assert (logits.grad[learned].abs().amax(dim=-1) > 0).all()


def test_packer_carries_the_mask_across_block_boundaries() -> None:
    packer = ExamplePacker(block_len=5, eos_id=99)
    blocks = packer.add([([1, 2, 3], [4, 5]), ([6, 7, 8, 9, 10, 11], [12])])
    # stream: 1 2 3 4 5 99 | 6 7 8 9 10 11 12 99, flags 0 0 0 1 1 1 | 0 0 0 0 0 0 1 1
    assert blocks.tolist() == [[[1, 2, 3, 4, 5], [0, 0, 0, 1, 1]]]  # [99 6 7 8 9]: prompt targets only
    assert packer.carry == [[10, 11, 12, 99], [0, 0, 1, 1]]  # the prompt's tail stays a prompt
    blocks = ExamplePacker(5, 99, packer.carry).add([([13], [14, 15])])
    assert blocks.tolist() == [[[10, 11, 12, 99, 13], [0, 0, 1, 1, 0]]]
    x, y = inputs_and_targets(torch.from_numpy(blocks).long())
    assert x.tolist() == [[10, 11, 12, 99]] and y.tolist() == [[-100, 12, 99, -100]]


def test_packed_blocks_are_the_examples_in_order_with_nothing_padded() -> None:
    examples = [
        (BYTES.encode(example(i)["prompt"]), BYTES.encode(example(i)["response"])) for i in range(200)
    ]
    packer = ExamplePacker(block_len=90, eos_id=EOS)  # longer than every prompt: no block is dropped
    blocks = np.concatenate([packer.add(examples[:70]), packer.add(examples[70:])])
    assert len(blocks) > 20 and len(packer.carry[0]) < 90
    ids, flags = [*blocks[:, 0].reshape(-1).tolist(), *packer.carry[0]], blocks[:, 1].reshape(-1).tolist()
    assert ids == [t for p, r in examples for t in [*p, *r, EOS]]
    assert [*flags, *packer.carry[1]] == [f for p, r in examples for f in [0] * len(p) + [1] * (len(r) + 1)]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_twice_mid_stream_sees_the_uninterrupted_batches(tmp_path: Path, num_workers: int) -> None:
    def saved(state: dict) -> dict:  # as a checkpoint stores it, in rank_<r>.pt
        torch.save({"data": state}, tmp_path / "rank_0.pt")
        return torch.load(tmp_path / "rank_0.pt", weights_only=False)["data"]

    for part in range(3):  # three shards: one per file
        write_examples(tmp_path / f"part{part}.jsonl", range(part * 30, part * 30 + 30))
    source = open_examples(str(tmp_path / "*.jsonl"), "auto", "prompt", "response", "strict")

    def loader() -> StreamingLoader:
        return StreamingLoader(spec([source], shuffle_blocks=5, tokenize_batch=3), 3, 1, 0, 1, num_workers)

    def take(it: StreamingLoader, n: int) -> list[torch.Tensor]:
        return [torch.cat(next(it), dim=1) for _ in range(n)]

    expected = take(loader(), 80)  # into the second epoch
    first = loader()
    got = take(first, 9)
    second = loader()
    second.load_state_dict(saved(first.state_dict()))
    got += take(second, 33)
    third = loader()
    third.load_state_dict(saved(second.state_dict()))
    got += take(third, 38)
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))


def test_parquet_examples_read_like_json_lines(tmp_path: Path) -> None:
    rows = [example(i) for i in range(10)]
    pq.write_table(
        pa.table({k: [r[k] for r in rows] for k in ("prompt", "response")}), tmp_path / "a.parquet"
    )
    write_examples(tmp_path / "a.jsonl", range(10))
    read = [
        list(open_examples(str(tmp_path / f"a.{ext}"), "auto", "prompt", "response", "strict").documents(0))
        for ext in ("parquet", "jsonl")
    ]
    assert read[0] == read[1] and [e.response for e in read[0]] == [r["response"] for r in rows]


GOOD = '{"prompt": "a", "response": "B"}'
BAD_EXAMPLES = [
    (
        [GOOD, "", '{"prompt": "c"}'],
        {},
        r"a.jsonl:3: no field 'response' \(data.response_field\); its fields: prompt$",
    ),
    ([GOOD, '{"prompt": null, "response": "D"}'], {}, r"a.jsonl:2: no field 'prompt' \(data.prompt_field\)"),
    ([GOOD, '{"prompt": "c", "response": "  "}'], {}, r"a.jsonl:2: field 'response' is empty"),
    (['{"prompt": "a", "response": 5}'], {}, r"a.jsonl:1: field 'response' holds int, not text"),
    (
        ['{"q": "a", "a": "B"}'],
        {"prompt_field": "q", "response_field": "answer"},
        r"a.jsonl:1: no field 'answer'.*: q, a$",
    ),
    ([GOOD, '{"prompt": "a", "response"'], {}, r"a.jsonl:2 is not valid JSON"),
]


@pytest.mark.parametrize(("lines", "fields", "message"), BAD_EXAMPLES)
def test_bad_examples_are_named_by_file_line_and_field(
    tmp_path: Path, lines: list[str], fields: dict, message: str
) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=message):  # a bad first line fails at build, a later one when read
        loader, _ = build_data(sft_data(path, val_fraction=0.0, **fields), BYTES, BatchLayout(16, 2))
        next(loader)


def test_missing_or_plain_text_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data.path=.*nothing.jsonl does not exist"):
        build_data(sft_data(tmp_path / "nothing.jsonl"), BYTES, BatchLayout(16, 2))
    (tmp_path / "a.txt").write_text("some text\n")
    with pytest.raises(DataError, match=r"holds text files; data=sft reads JSON Lines or Parquet"):
        build_data(sft_data(tmp_path / "a.txt"), BYTES, BatchLayout(16, 2))
    with pytest.raises(ConfigError, match=r"data.text_format=text is not valid with data=sft"):
        compose_config(["data=sft", "data.text_format=text"])
    with pytest.raises(ConfigError, match=r"data.prompt_field and data.response_field are both 'text'"):
        compose_config(["data=sft", "data.prompt_field=text", "data.response_field=text"])


def test_the_bundled_example_file_reads_with_the_shakespeare_alphabet() -> None:
    cfg = compose_config(["experiment=sft"]).data
    cfg.path = str(ROOT / cfg.path)
    examples = list(
        open_examples(cfg.path, "auto", cfg.prompt_field, cfg.response_field, "strict").documents(0)
    )
    assert len(examples) >= 300 and Path(cfg.path).stat().st_size < 200_000
    alphabet = set(build_data_tokenizer(cfg, TokenizerConfig(name="char")).chars)
    assert alphabet <= set((ROOT / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8"))


def test_messages_render_through_the_chat_format_and_only_the_last_reply_is_learned(tmp_path: Path) -> None:
    conversation = [
        {"role": "system", "content": "sys;"},
        {"role": "user", "content": "q1;"},
        {"role": "assistant", "content": "A1."},
        {"role": "user", "content": "q2;"},
        {"role": "assistant", "content": "A2."},
    ]
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"messages": conversation, "id": 1}) + "\n")
    source = open_examples(str(path), "auto", "prompt", "response", "strict", messages_field="messages")
    (example,) = source.documents(0)
    packer = ExamplePacker(block_len=64, eos_id=EOS)
    packer.add(encode_examples(BYTES, [example]))
    ids, learned = packer.carry
    # the packed example is the whole conversation as the chat format spells it, EOS as EOS
    rendered = render_chat(conversation, BYTES.eos_token, add_generation_prompt=False)
    assert ids == encode_texts(BYTES, [rendered])[0]
    assert ids.count(EOS) == 2 and learned == [0] * (len(ids) - 4) + [1] * 4  # "A2." and its EOS


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ([{"role": "user", "content": "q"}], "must end with an assistant message"),
        (
            [{"role": "robot", "content": "q"}, {"role": "assistant", "content": "A"}],
            "message 0 needs a role",
        ),
        ([{"role": "assistant", "content": 5}], "message 0 needs text content"),
        ("hello", "must be a non-empty list"),
    ],
)
def test_bad_conversations_are_named_by_file_line_and_field(tmp_path: Path, messages, message: str) -> None:
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"messages": messages}) + "\n")
    source = open_examples(str(path), "auto", "prompt", "response", "strict", messages_field="messages")
    with pytest.raises(DataError, match=rf"chat.jsonl:1: field 'messages' {message}"):
        next(source.documents(0))
