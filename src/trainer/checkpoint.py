"""Checkpoints as directories: written under a temporary name, verified by a manifest, published by rename.

Layout of `checkpoints/step_<N>/`: the strategy's model and optimizer files, `trainer_state.json`
(step, tokens seen, world size), `rank_<r>.pt` (RNG states and data position of each rank), the
resolved `config.yaml`, the tokenizer, and `manifest.json` (every file's size and sha256) written
last as the commit marker. `latest` names the newest committed checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from gptforge.errors import CheckpointError

MANIFEST = "manifest.json"
TRAINER_STATE = "trainer_state.json"
LATEST = "latest"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _attempt(action: Callable[[], object]) -> Exception | None:
    # any failure, not only OSError: torch.save reports a full disk as a RuntimeError from its zip writer
    try:
        action()
    except Exception as err:
        return err
    return None


def verify(directory: Path) -> str | None:
    """None if `directory` is a complete checkpoint whose files match its manifest, else what is wrong."""
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        return "no manifest (the save did not finish)"
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError:
        return "manifest is not valid JSON"
    for name, entry in manifest["files"].items():
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != entry["size"]:
            return f"{name} has {path.stat().st_size} bytes, the manifest says {entry['size']}"
        if _sha256(path) != entry["sha256"]:
            return f"{name} does not match its checksum"
    return None


class Checkpointer:
    """Saves, finds, verifies and prunes the checkpoints of one run directory."""

    def __init__(
        self,
        root: Path,
        keep_last: int,
        is_main: bool,
        barrier: Callable[[], None],
        any_rank: Callable[[bool], bool] = lambda flag: flag,
    ) -> None:
        self.root = Path(root)
        self.keep_last = keep_last
        self.is_main = is_main
        self.barrier = barrier
        self.any_rank = any_rank  # collective: True on every rank if True on any (doubles as a barrier)

    def step_dirs(self) -> list[Path]:
        """Committed-looking checkpoint directories, newest first."""
        if not self.root.is_dir():
            return []
        dirs = [p for p in self.root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)]
        return sorted(dirs, key=lambda p: int(_STEP_DIR.match(p.name).group(1)), reverse=True)

    def latest_valid(self) -> Path | None:
        """The newest checkpoint that passes `verify`; broken ones are reported and skipped.

        Raises CheckpointError when checkpoints exist but none is valid: a run must never silently
        start over.
        """
        candidates = self.step_dirs()
        for directory in candidates:
            problem = verify(directory)
            if problem is None:
                return directory
            if self.is_main:
                print(f"gptforge: skipping checkpoint {directory}: {problem}", flush=True)
        if candidates:
            raise CheckpointError(
                f"no valid checkpoint in {self.root} ({len(candidates)} found, all incomplete or corrupt); "
                "point out_dir elsewhere or pass trainer.resume=never trainer.overwrite=true"
            )
        return None

    def save(
        self,
        step: int,
        write_shards: Callable[[Path], None],
        write_main: Callable[[Path], None],
    ) -> Path:
        """Write checkpoint `step`: every rank runs `write_shards(tmp)`, rank 0 also `write_main(tmp)`.

        A write error on any rank (disk full, I/O error) raises CheckpointError on every rank, so none
        waits forever at a barrier; the partial directory is removed and earlier checkpoints stay as
        they were.
        """
        final = self.root / f"step_{step}"
        tmp = self.root / f".tmp-step_{step}"
        if self.is_main:
            if tmp.exists():
                shutil.rmtree(tmp)  # a partial save from a crashed run: never committed, safe to drop
            tmp.mkdir(parents=True)
        self.barrier()
        failure = _attempt(lambda: (write_shards(tmp), self.is_main and write_main(tmp)))
        self._raise_if_any(failure, tmp, f"writing checkpoint {final.name}")
        if self.is_main:
            failure = _attempt(lambda: (self._commit(tmp, final), self._prune()))
        self._raise_if_any(failure, tmp, f"committing checkpoint {final.name}")
        return final

    def _raise_if_any(self, failure: Exception | None, tmp: Path, doing: str) -> None:
        if not self.any_rank(failure is not None):
            return
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        if failure is None:
            reason = "it failed on another rank"
        else:
            reason = getattr(failure, "strerror", None) or str(failure).splitlines()[0]
            reason += f" ({shutil.disk_usage(self.root).free / 1e6:.1f} MB free there)"
        raise CheckpointError(
            f"{doing} in {self.root} failed: {reason}; earlier checkpoints are untouched"
        ) from failure

    def _commit(self, tmp: Path, final: Path) -> None:
        files = {}
        for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
            _fsync(path)
            files[str(path.relative_to(tmp))] = {"size": path.stat().st_size, "sha256": _sha256(path)}
        _write_atomic(tmp / MANIFEST, json.dumps({"files": files}, indent=1))
        if final.exists():
            # the same step saved again (e.g. a resume right after a save): the committed copy stays
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, final)
        _fsync(self.root)
        _write_atomic(self.root / LATEST, final.name + "\n")

    def _prune(self) -> None:
        for old in self.step_dirs()[self.keep_last :]:
            shutil.rmtree(old)


def save_rank_state(directory: Path, rank: int, state: dict) -> None:
    torch.save(state, directory / f"rank_{rank}.pt")


def load_rank_state(directory: Path, rank: int) -> dict:
    path = directory / f"rank_{rank}.pt"
    if not path.is_file():
        raise CheckpointError(f"{directory} has no state for rank {rank}; it was saved with fewer ranks")
    return torch.load(path, map_location="cpu", weights_only=False)


def write_trainer_state(directory: Path, state: dict) -> None:
    (directory / TRAINER_STATE).write_text(json.dumps(state, indent=1))


def read_trainer_state(directory: Path) -> dict:
    return json.loads((directory / TRAINER_STATE).read_text())


def capture_rng() -> dict:
    """Every RNG a step may draw from: python, numpy, torch CPU and CUDA."""
    import random

    import numpy as np

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    import random

    import numpy as np

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# keys that may differ between the run that saved a checkpoint and the one resuming it
_RESUME_FREE_KEYS = ("out_dir", "name", "debug", "dry_run", "trainer.resume", "trainer.overwrite")
# keys whose change makes the saved weights unusable: other shapes or another vocabulary
_SHAPE_KEYS = ("flavour", "vocab_size", "block_size", "n_layer", "n_head", "n_kv_head", "n_embd")
_RESUME_FIXED_PREFIXES = (
    "tokenizer.",
    "model.lora.",
    *(f"model.{key}:" for key in (*_SHAPE_KEYS, "intermediate_size", "bias", "tie_embeddings")),
)


def _flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_changes(saved: dict, current: dict) -> list[str]:
    """`key: old -> new` for every config value that differs, except keys meant to change on resume."""
    old, new = _flatten(saved), _flatten(current)
    return [
        f"{key}: {old.get(key)!r} -> {new.get(key)!r}"
        for key in sorted(old.keys() | new.keys())
        if old.get(key) != new.get(key) and key not in _RESUME_FREE_KEYS
    ]


def check_resumable(directory: Path, current: dict) -> list[str]:
    """Config changes since `directory` was saved; CheckpointError if the model or tokenizer changed."""
    from omegaconf import OmegaConf

    saved = OmegaConf.to_container(OmegaConf.load(directory / "config.yaml"))
    changes = config_changes(saved, current)
    fixed = [change for change in changes if change.startswith(_RESUME_FIXED_PREFIXES)]
    if fixed:
        raise CheckpointError(
            f"checkpoint {directory} is from another model or tokenizer ({'; '.join(fixed)}); "
            "resume with the saved model config, use trainer.init_from for new shapes, or a new out_dir"
        )
    return changes
