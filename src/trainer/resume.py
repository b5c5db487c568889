"""May this start continue the run in its out_dir? Checked before anything is written there.

A resumed run must be the run that was saved, only longer: a change to what is trained or how (model,
data, tokenizer, optim, scheduler, seed, batch sizes, ...) stops the start with one line naming the keys,
while keys that only change how the run is watched, saved or how long it goes are reported and allowed.
The checkpoint's `config.yaml` names what changed; its `config_hash` (in `trainer_state.json`) says
in one comparison whether anything that matters did.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from fnmatch import fnmatch
from pathlib import Path

from omegaconf import OmegaConf

from gptforge.config import Config
from gptforge.data.pipeline import DATA_SOURCES
from gptforge.data.tokenizers import TOKENIZER_FILE
from gptforge.errors import ConfigError, LaunchError
from gptforge.trainer.checkpoint import CHECKPOINTS, CONFIG, Checkpointer, read_trainer_state
from gptforge.trainer.checkpoint.layout import WANDB_ID_FILE
from gptforge.trainer.strategies import STRATEGIES, resolve_strategy_name, strategy_class
from gptforge.trainer.strategies.mesh import MeshShape, resolve_mesh

# keys that name this start rather than the run: where it lives and how it was asked to start
RUN_KEYS = ("out_dir", "name", "debug", "dry_run", "trainer.resume", "trainer.overwrite")
# keys that change how long the run goes, how it is watched and saved, or how fast it runs: never what
# it computes from the saved state (init_from is ignored on resume: the checkpoint wins)
SAFE_TO_CHANGE = (
    "trainer.max_steps",
    "trainer.max_tokens",
    "scheduler.decay_steps",  # with max_steps: check_schedule refuses a re-plan that jumps the rate
    "trainer.log_every",
    "trainer.eval_every",
    "trainer.eval_batches",
    "trainer.checkpoint_every",
    "trainer.keep_last",
    "trainer.sample_tokens",
    "trainer.profile*",
    "trainer.threads",
    "trainer.cpu_batch_threads",
    "trainer.compile",
    "optim.fused",
    "trainer.peak_flops_per_sec",
    "trainer.init_from",
    "trainer.nonfinite_policy",
    "trainer.max_consecutive_skips",
    "trainer.spike_*",
    "logger.*",
    "eval.*",  # downstream tasks are read-only: any may be scored from any step on
    "strategy.timeout_s",
    "strategy.backend",
    "strategy.activation_checkpointing",
    "strategy.reshard_after_forward",
    # the mesh: DCP reshards a checkpoint onto another (check_layout says when the data cannot follow)
    "strategy.dp_replicate",
    "strategy.dp_shard",
    "strategy.tp",
    "strategy.pp",
    "strategy.pp_schedule",
    "strategy.loss_parallel",
)


def _flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def is_safe_to_change(key: str) -> bool:
    """Whether `key` may differ between a checkpoint and the run resuming it (with a report)."""
    return any(fnmatch(key, pattern) for pattern in (*RUN_KEYS, *SAFE_TO_CHANGE))


def _comparable(flat: dict[str, object], world_size: int | None) -> dict[str, object]:
    """Values as they act on training: the global batch in sequences, the strategy by checkpoint format."""
    values = dict(flat)
    trainer_global = values.get("trainer.global_batch_size")
    if world_size is not None and trainer_global is None and "trainer.micro_batch_size" in values:
        values["trainer.global_batch_size"] = values["trainer.micro_batch_size"] * world_size
    name = values.get("strategy.name")
    if name in ("auto", *STRATEGIES):  # strategies that read each other's checkpoints are one (single, ddp)
        resolved = resolve_strategy_name(name, 1) if name == "auto" else name
        values["strategy.name"] = strategy_class(resolved).checkpoint_format
    return values


def config_hash(config: dict, world_size: int) -> str:
    """sha256 of the keys a resumed run must share with this one (not those safe to change)."""
    values = _comparable(_flatten(config), world_size)
    kept = {key: value for key, value in sorted(values.items()) if not is_safe_to_change(key)}
    return hashlib.sha256(json.dumps(kept, default=str).encode()).hexdigest()


def config_changes(
    saved: dict, current: dict, saved_world: int | None = None, world: int | None = None
) -> tuple[list[str], list[str]]:
    """(`key: old -> new` safe to change, ... not safe) between a saved config and the current one.

    With both world sizes given, the global batch is compared in sequences per step, so `null` on 2 ranks
    equals 8 on 1 rank when micro_batch_size is 4.
    """
    old_raw, new_raw = _flatten(saved), _flatten(current)
    known = saved_world is not None and world is not None
    old = _comparable(old_raw, saved_world if known else None)
    new = _comparable(new_raw, world if known else None)
    safe, unsafe = [], []
    for key in sorted(old.keys() | new.keys()):
        if key in RUN_KEYS:
            continue
        if old.get(key) == new.get(key):  # equal in effect, e.g. ddp -> single, or null -> 8 sequences
            if old_raw.get(key) != new_raw.get(key):
                safe.append(f"{key}: {old_raw.get(key)!r} -> {new_raw.get(key)!r}")
            continue
        change = f"{key}: {old.get(key)!r} -> {new.get(key)!r}"
        (safe if is_safe_to_change(key) else unsafe).append(change)
    return safe, unsafe


def _ranks(count: int) -> str:
    return f"{count} rank" if count == 1 else f"{count} ranks"


def check_layout(
    directory: Path, saved: tuple[int, MeshShape], current: tuple[int, MeshShape], cfg: Config, state: dict
) -> None:
    """LaunchError unless a checkpoint written on `saved` (world size, mesh) continues exactly on `current`.

    Random-window data (text_file, memmap) draws step s's global batch from (seed, s) alone, and
    `single`, `ddp` and `fsdp` load model and optimizer on any world size and mesh: those resume as long
    as the global batch stays the same. Streaming data keeps a position per data-parallel rank and
    DeepSpeed shards its optimizer per rank: those need the same world size and mesh.
    """
    if saved == current:
        return
    (saved_world, saved_mesh), (world, mesh) = saved, current
    saved_global = state.get("global_batch_size")
    current_global = cfg.trainer.global_batch_size or cfg.trainer.micro_batch_size * mesh.data_parallel_size
    fixed = strategy_class(resolve_strategy_name(cfg.strategy.name, world)).fixed_world_size
    if fixed:
        reason = fixed
    elif DATA_SOURCES[cfg.data.source].streaming:
        reason = f"data.source={cfg.data.source} keeps a stream position per rank"
    elif saved_global is not None and saved_global != current_global:
        reason = (
            f"its global batch was {saved_global} sequences per step, this run's is {current_global}; "
            f"trainer.global_batch_size={saved_global} keeps it"
        )
    else:
        return
    if saved_world == world:  # the same ranks, laid out on another mesh
        raise LaunchError(
            f"checkpoint {directory.name} was written on the mesh {saved_mesh.describe()}; this run's is "
            f"{mesh.describe()} ({reason}): resume with the strategy.dp_replicate/dp_shard/tp/pp it was "
            f"written with, or start a new run from its weights with trainer.init_from={directory} "
            "out_dir=<new dir>"
        )
    raise LaunchError(
        f"checkpoint {directory.name} was written by {_ranks(saved_world)}; this run has {world} ({reason}): "
        f"resume with NPROC={saved_world}, or start a new run from its weights with "
        f"trainer.init_from={directory} out_dir=<new dir>"
    )


def _refuse(run_dir: Path, unsafe: list[str]) -> ConfigError:
    return ConfigError(
        f"out_dir {run_dir} holds a run with another config ({'; '.join(unsafe)}): resume with the original "
        "config, use a new out_dir, or start over there with trainer.resume=never trainer.overwrite=true "
        "(the earlier run is moved aside, not deleted)"
    )


def _load_yaml(path: Path) -> dict | None:
    try:
        return OmegaConf.to_container(OmegaConf.load(path))
    except Exception:
        return None  # a config.yaml cut short by a crash: nothing reliable to compare against


def find_resume_checkpoint(cfg: Config, run_dir: Path, is_main: bool) -> Path | None:
    """The newest valid checkpoint `trainer.resume=auto` continues (None: a fresh start).

    Raises CheckpointError when checkpoints exist but none is valid.
    """
    if cfg.trainer.resume == "never":
        return None
    return Checkpointer(run_dir / CHECKPOINTS, cfg.trainer.keep_last, is_main, lambda: None).latest_valid()


def check_resume(cfg: Config, run_dir: Path, directory: Path | None, world_size: int, is_main: bool) -> None:
    """Whether this start may continue the run in `run_dir` from `directory` (None: no checkpoint yet).

    Raises ConfigError for a changed config (naming the keys) or a learning rate that would jump,
    LaunchError for a world size the checkpoint cannot continue on.
    """
    if cfg.trainer.resume == "never":
        return
    current = OmegaConf.to_container(OmegaConf.structured(cfg))
    if directory is None:  # a run that stopped before its first checkpoint still must not be mixed up
        saved = _load_yaml(run_dir / CONFIG)
        safe, unsafe = config_changes(saved, current) if saved is not None else ([], [])
    else:
        state = read_trainer_state(directory)
        saved_world = state.get("world_size", 1)
        saved_mesh = MeshShape(*state["mesh"]) if "mesh" in state else None  # (earlier versions: none)
        layout = (saved_world, saved_mesh or resolve_mesh(cfg.strategy, world_size))
        check_layout(directory, layout, (world_size, resolve_mesh(cfg.strategy, world_size)), cfg, state)
        saved = _load_yaml(directory / CONFIG)
        if state.get("config_hash") == config_hash(current, world_size):
            unsafe = []
            safe = config_changes(saved, current, saved_world, world_size)[0] if saved else []
        else:
            safe, unsafe = config_changes(saved or {}, current, saved_world, world_size)
        if not unsafe and saved:
            safe += check_schedule(saved, cfg, state["step"])
    if unsafe:
        raise _refuse(run_dir, unsafe)
    if safe and is_main:
        where = directory.name if directory is not None else "the earlier start"
        print(f"gptforge: config changed since {where} (safe to change): {'; '.join(safe)}", flush=True)


def check_schedule(saved: dict, cfg: Config, step: int) -> list[str]:
    """What a changed run length does to the learning rate from the resume step on, as report lines;
    ConfigError if the rate would jump there.

    A longer run re-plans a decay that ends at max_steps (cosine, linear, wsd's cool-down): resuming in
    the middle of it would jump the rate up. Say so before it happens, and name the ways on.
    """
    from gptforge.config import SchedulerConfig
    from gptforge.trainer.schedules import LRSchedule

    old_steps = saved.get("trainer", {}).get("max_steps")
    old_decay = saved.get("scheduler", {}).get("decay_steps")
    if old_steps is None or (old_steps, old_decay) == (cfg.trainer.max_steps, cfg.scheduler.decay_steps):
        return []
    try:
        saved_scheduler = OmegaConf.merge(OmegaConf.structured(SchedulerConfig), saved["scheduler"])
        old_scheduler = OmegaConf.to_object(saved_scheduler)
    except Exception:
        return []  # a config of another version: the hash comparison already vouched for the schedule
    old = LRSchedule(old_scheduler, cfg.optim.lr, old_steps)(step)
    schedule = LRSchedule(cfg.scheduler, cfg.optim.lr, cfg.trainer.max_steps)
    new = schedule(step)
    if math.isclose(old, new, rel_tol=1e-9, abs_tol=1e-12):
        if cfg.scheduler.name == "wsd":
            return [
                f"wsd: the cool-down now runs from step {schedule.wsd_decay_start} to {schedule.decay_steps}"
            ]
        if cfg.scheduler.name != "constant" and schedule.decay_steps < cfg.trainer.max_steps:
            return [f"the learning rate stays at {schedule.min_lr:.3g} after step {schedule.decay_steps}"]
        return []
    change = f"trainer.max_steps {old_steps} -> {cfg.trainer.max_steps}"
    if old_decay != cfg.scheduler.decay_steps:
        change += f", scheduler.decay_steps {old_decay} -> {cfg.scheduler.decay_steps}"
    raise ConfigError(
        f"{change} would re-plan the {cfg.scheduler.name} "
        f"schedule: at step {step} the learning rate would jump from {old:.3g} to {new:.3g}. To train on at "
        f"the decayed rate, also set scheduler.decay_steps={old_scheduler.decay_steps or old_steps}; "
        "for runs "
        "meant to be extended, train with scheduler=wsd (extend it before its cool-down starts) or "
        "scheduler=constant"
    )


def run_files(run_dir: Path, metrics_file: str) -> list[Path]:
    """What a run writes at the top of its out_dir and would overwrite if started over."""
    names = [CHECKPOINTS, CONFIG, metrics_file, WANDB_ID_FILE, TOKENIZER_FILE]
    meta = run_dir / TOKENIZER_FILE
    if meta.is_file():
        with contextlib.suppress(json.JSONDecodeError, AttributeError):  # unreadable: moved all the same
            names.append(json.loads(meta.read_text()).get("file") or "")
    return [run_dir / name for name in names if name and (run_dir / name).exists()]


def holds_a_run(run_dir: Path) -> bool:
    """True if a run was started in `run_dir`: it wrote config.yaml or a checkpoint."""
    checkpoints = run_dir / CHECKPOINTS
    return (run_dir / CONFIG).is_file() or (checkpoints.is_dir() and any(checkpoints.iterdir()))


def set_aside(run_dir: Path, metrics_file: str) -> list[Path]:
    """Rename the earlier run's files to `<stem>.replaced-<time><suffix>`; never deletes anything."""
    files = run_files(run_dir, metrics_file)
    stamp = time.strftime("%Y%m%d-%H%M%S")

    def target(path: Path, tag: str) -> Path:
        return path.with_name(f"{path.stem}.replaced-{tag}{path.suffix}")

    tag, attempt = stamp, 1
    while any(target(path, tag).exists() for path in files):  # two overwrites within one second
        attempt += 1
        tag = f"{stamp}-{attempt}"
    moved = []
    for path in files:
        path.rename(target(path, tag))
        moved.append(target(path, tag))
    return moved
