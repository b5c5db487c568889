"""Checkpoints as directories: written under a temporary name, verified by a manifest, published by rename.

Layout of `checkpoints/step_<N>/`: the strategy's model and optimizer files, `trainer_state.json`
(step, tokens seen, world size), `rank_<r>.pt` (RNG states and data position of each rank), the
resolved `config.yaml`, the tokenizer, and `manifest.json` (every file's size and sha256) written
last as the commit marker. `latest` names the newest committed checkpoint.

A SIGKILL at any moment leaves either the previous state or the new one: a save is published by one
rename, `latest` moves after it, and pruning renames a directory out of `step_<N>` before deleting it,
so no half-written or half-deleted directory is ever named like a checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from gptforge.errors import CheckpointError
from gptforge.trainer.checkpoint.layout import (
    CONFIG,
    LATEST,
    MANIFEST,
    PRUNED_PREFIX,
    STEP_DIR,
    TMP_PREFIX,
    TRAINER_STATE,
    rank_file,
    step_dir,
    step_of,
)


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


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` by `text` in one rename: a crash leaves the old file or the new one, never half."""
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
        files = json.loads(manifest_path.read_text())["files"]
        entries = [(name, int(entry["size"]), str(entry["sha256"])) for name, entry in files.items()]
    except (ValueError, KeyError, TypeError, AttributeError):
        return "manifest is not valid"
    for name, size, sha256 in entries:
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, the manifest says {size}"
        if _sha256(path) != sha256:
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
        self._valid: set[Path] = set()  # checkpoints this process wrote or verified: counted by keep_last

    def step_dirs(self) -> list[Path]:
        """Committed-looking checkpoint directories, newest first."""
        if not self.root.is_dir():
            return []
        dirs = [p for p in self.root.iterdir() if p.is_dir() and STEP_DIR.match(p.name)]
        return sorted(dirs, key=step_of, reverse=True)

    def latest_valid(self) -> Path | None:
        """The newest checkpoint that passes `verify`; broken ones are reported and skipped.

        Raises CheckpointError when checkpoints exist but none is valid: a run must never silently
        start over.
        """
        candidates = self.step_dirs()
        for directory in candidates:
            problem = verify(directory)
            if problem is None:
                self._valid.add(directory)
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
        final = step_dir(self.root, step)
        tmp = self.root / f"{TMP_PREFIX}{final.name}"
        failure = _attempt(lambda: self._prepare(tmp)) if self.is_main else None
        self._raise_if_any(failure, tmp, f"creating {tmp.name} for checkpoint {final.name}")
        failure = _attempt(lambda: (write_shards(tmp), self.is_main and write_main(tmp)))
        self._raise_if_any(failure, tmp, f"writing checkpoint {final.name}")
        if self.is_main:
            failure = _attempt(lambda: (self._commit(tmp, final), self._prune()))
        self._raise_if_any(failure, tmp, f"committing checkpoint {final.name}")
        return final

    def _prepare(self, tmp: Path) -> None:
        if tmp.exists():
            shutil.rmtree(tmp)  # a partial save from a crashed run: never committed, safe to drop
        for pruned in self.root.glob(f"{PRUNED_PREFIX}*") if self.root.is_dir() else []:
            shutil.rmtree(pruned)  # a prune cut short by a crash: the run already let it go
        tmp.mkdir(parents=True)

    def resume_from(self, directory: Path | None) -> None:
        """Start after `directory`, the newest valid checkpoint (`latest_valid`): the ones named after later
        steps are damaged and set aside (main rank), so that no later prune counts them as kept."""
        if directory is None:
            return
        self._valid.add(directory)
        if self.is_main:
            for newer in [d for d in self.step_dirs() if step_of(d) > step_of(directory)]:
                self._set_aside(newer)

    def _set_aside(self, directory: Path) -> Path:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside, attempt = directory.with_name(f"{directory.name}.damaged-{stamp}"), 1
        while aside.exists():
            attempt += 1
            aside = directory.with_name(f"{directory.name}.damaged-{stamp}-{attempt}")
        os.replace(directory, aside)
        print(f"gptforge: set aside damaged checkpoint {directory.name} as {aside.name}", flush=True)
        return aside

    def _raise_if_any(self, failure: Exception | None, tmp: Path, doing: str) -> None:
        if not self.any_rank(failure is not None):
            return
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        if failure is None:
            reason = "it failed on another rank"
        else:
            reason = getattr(failure, "strerror", None) or str(failure).splitlines()[0]
            existing = next(p for p in (self.root, *self.root.parents) if p.exists())
            reason += f" ({shutil.disk_usage(existing).free / 1e6:.1f} MB free there)"
        raise CheckpointError(
            f"{doing} in {self.root} failed: {reason}; earlier checkpoints are untouched"
        ) from failure

    def _commit(self, tmp: Path, final: Path) -> None:
        files = {}
        for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
            _fsync(path)
            files[str(path.relative_to(tmp))] = {"size": path.stat().st_size, "sha256": _sha256(path)}
        write_atomic(tmp / MANIFEST, json.dumps({"files": files}, indent=1))
        _fsync(tmp)
        if final.exists() and verify(final) is None:
            # the same step saved again (e.g. a resume right after a save): the committed copy stays
            shutil.rmtree(tmp)
        else:
            if final.exists():  # a damaged copy of this step that the run resumed around: keep it aside
                self._set_aside(final)
            os.replace(tmp, final)
        self._valid.add(final)
        _fsync(self.root)
        write_atomic(self.root / LATEST, final.name + "\n")

    def _prune(self) -> None:
        """Keep the newest `keep_last` valid checkpoints; a damaged one is set aside, never counted, so a
        prune can never leave the run without a checkpoint to resume from."""
        kept = 0
        for directory in self.step_dirs():
            if kept < self.keep_last:  # a candidate to keep: it must be valid (each is verified once)
                if directory not in self._valid:
                    if verify(directory) is not None:
                        self._set_aside(directory)
                        continue
                    self._valid.add(directory)
                kept += 1
                continue
            doomed = directory.with_name(PRUNED_PREFIX + directory.name)
            os.replace(directory, doomed)
            self._valid.discard(directory)
            shutil.rmtree(doomed)


def find_checkpoint(path: str | Path) -> Path:
    """A verified step directory: `path` itself, or the newest valid one in a run or checkpoints/ dir."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; give a checkpoint step_<N> dir or a run directory")
    if (path / TRAINER_STATE).is_file():
        problem = verify(path)
        if problem:
            raise CheckpointError(
                f"checkpoint {path} is not usable: {problem}; give another step_<N> dir, or the run "
                "directory for its newest valid checkpoint"
            )
        return path
    for root in (path / "checkpoints", path):
        try:
            found = Checkpointer(root, keep_last=1, is_main=True, barrier=lambda: None).latest_valid()
        except CheckpointError:
            raise CheckpointError(
                f"every checkpoint in {root} is incomplete or corrupt; give a run directory or step_<N> dir "
                "whose files match its manifest.json"
            ) from None
        if found is not None:
            return found
    raise CheckpointError(f"{path} holds no checkpoint; give a step_<N> dir or a run directory with one")


def save_run_files(directory: Path, cfg: object, tokenizer: object) -> None:
    """What a run keeps at the top of its directory and in each checkpoint: its config and tokenizer."""
    from omegaconf import OmegaConf

    tokenizer.save(directory)
    OmegaConf.save(OmegaConf.structured(cfg), directory / CONFIG)


def save_files_atomically(directory: Path, write: Callable[[Path], None]) -> None:
    """`write(tmp)` into a fresh directory beside `directory`, then each file renamed into place: the run
    directory never holds a half-written tokenizer or config, whatever stops the process."""
    directory.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".writing-", dir=directory))
    try:
        write(tmp)
        for path in tmp.iterdir():
            _fsync(path)
            os.replace(path, directory / path.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def save_safetensors(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """safetensors.save_file, with the file's mode set as for any file this process writes (the library
    writes 0600, which other users of a shared model directory could not read)."""
    from safetensors.torch import save_file

    save_file(state, str(path), metadata=metadata)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def save_rank_state(directory: Path, rank: int, state: dict) -> None:
    torch.save(state, rank_file(directory, rank))


def load_rank_state(directory: Path, rank: int) -> dict:
    path = rank_file(directory, rank)
    if not path.is_file():
        raise CheckpointError(f"{directory} has no state for rank {rank}; it was saved with fewer ranks")
    return torch.load(path, map_location="cpu", weights_only=False)


def reseed_rng(seed: int, rank: int, step: int) -> None:
    """Fresh RNG streams for `rank` from step `step` on, for a resume under another world size.

    The saved per-rank RNG states belong to the old ranks; dropout only needs streams that differ
    across ranks and are the same on every such resume.
    """
    import random

    import numpy as np

    (derived,) = np.random.SeedSequence([seed, rank, step]).generate_state(1)
    random.seed(int(derived))
    np.random.seed(int(derived))
    torch.manual_seed(int(derived))


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
