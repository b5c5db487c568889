"""gptforge tokenizers as Hugging Face `tokenizers` objects, and the tokenizer files of an HF model dir.

Each tokenizer class makes its own `to_hf()` from the pieces here: bpe is copied as trained; gpt2
(tiktoken) and byte are written as the equivalent byte-level BPE; char as a one-character-per-token
WordLevel tokenizer, which encodes exactly the characters it was trained on (any other is an error, as in
gptforge) and decodes by joining.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import TYPE_CHECKING

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

if TYPE_CHECKING:
    from gptforge.data.tokenizers import Tokenizer

HF_TOKENIZER_FILE = "tokenizer.json"


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in character for each byte, as byte-level BPE vocabularies spell tokens."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            mapping[byte] = chr(byte)
        else:
            mapping[byte] = chr(256 + extra)
            extra += 1
    return mapping


def byte_level(vocab: dict[str, int], merges: list[tuple[str, str]], use_regex: bool) -> HFTokenizer:
    """A byte-level BPE over `vocab` (tokens spelt by `byte_to_unicode`) and `merges`."""
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=merges))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=use_regex)
    hf.decoder = decoders.ByteLevel()
    return hf


def tiktoken_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The BPE merges that reproduce tiktoken's mergeable ranks."""
    # each multi-byte token is the merge of the two parts that BPE, limited to lower ranks, leaves
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) == 1:
            continue
        parts = [bytes([b]) for b in token]
        while len(parts) > 2:
            pair_ranks = [ranks.get(a + b, rank) for a, b in itertools.pairwise(parts)]
            best = min(range(len(pair_ranks)), key=pair_ranks.__getitem__)
            if pair_ranks[best] >= rank:
                break
            parts[best : best + 2] = [parts[best] + parts[best + 1]]
        merges.append((parts[0], parts[1]))
    return merges


def character_level(stoi: dict[str, int]) -> HFTokenizer:
    """One token per character of `stoi`, decoding by joining."""
    hf = HFTokenizer(models.WordLevel(vocab=dict(stoi), unk_token=None))
    hf.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    hf.decoder = decoders.Fuse()
    return hf


def with_eos(hf: HFTokenizer, eos_token: str, eos_id: int) -> HFTokenizer:
    """`hf` with EOS as a special token at gptforge's id (ValueError if it would land elsewhere)."""
    hf.add_special_tokens([AddedToken(eos_token, special=True, normalized=False)])
    if hf.token_to_id(eos_token) != eos_id:
        raise ValueError(f"EOS {eos_token!r} would get another id than {eos_id}")
    return hf


def save_hf_tokenizer(
    tokenizer: Tokenizer, out_dir: Path, max_length: int, chat_template: str | None = None
) -> None:
    """tokenizer.json + tokenizer_config.json for AutoTokenizer (with the chat template of a fine-tune),
    and gptforge's own tokenizer files, so the directory also works as `trainer.init_from=hf:<dir>`."""
    tokenizer.save(out_dir)
    tokenizer.to_hf().save(str(out_dir / HF_TOKENIZER_FILE))
    eos = tokenizer.eos_token
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": eos,
        "eos_token": eos,
        "model_max_length": max_length,
        "clean_up_tokenization_spaces": False,
    }
    if chat_template is not None:
        config["chat_template"] = chat_template
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    special = {"bos_token": eos, "eos_token": eos}
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, ensure_ascii=False) + "\n")
