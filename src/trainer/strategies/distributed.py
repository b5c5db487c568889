"""What every multi-process strategy shares: the process group, metric all-reduce, barrier, teardown."""

from __future__ import annotations

import contextlib
import gc
import os
import socket
from collections.abc import Iterator
from datetime import timedelta

import torch
import torch.distributed as dist

from gptforge.config import StrategyConfig
from gptforge.errors import LaunchError
from gptforge.trainer.faults import CollectiveFailed
from gptforge.trainer.strategies.base import Strategy

# how gloo words a collective that timed out, and one whose peer process is gone; NCCL's watchdog
# aborts the process itself after the timeout, with the operation in its message
TIMED_OUT = ("Timed out", "timed out")
PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")


def process_group_backend(requested: str, device: torch.device) -> str:
    """`auto` is NCCL on CUDA and gloo on CPU; NCCL without a GPU is refused by name."""
    if requested == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if requested == "nccl" and device.type != "cuda":
        raise LaunchError("strategy.backend=nccl needs CUDA devices; use gloo or auto on CPU")
    return requested


def default_to_world_of_one() -> None:
    """Without a launcher (plain `python`), the rank environment of a one-process world on a free port."""
    if "RANK" in os.environ:
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    defaults = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1"}
    for key, value in {**defaults, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}.items():
        os.environ.setdefault(key, value)


def collective_failure(
    err: RuntimeError, rank: int, operation: str, timeout_s: int
) -> CollectiveFailed | None:
    """The one-line error for `operation` that timed out or lost a rank on `rank`; None for other errors."""
    message = str(err)
    if any(marker in message for marker in TIMED_OUT):
        return CollectiveFailed(
            f"rank {rank}: {operation} did not finish within strategy.timeout_s={timeout_s} s "
            "(another rank is stuck or died; its log says which); torchrun --max-restarts=N restarts "
            "the job from the last checkpoint, or run the same command to resume"
        )
    if isinstance(err, dist.DistError) or any(marker in message for marker in PEER_LOST):
        # gloo's first sentence, without its source location: "Connection closed by peer [ip]:port"
        cause = message.split("\n")[0].split("] ", 1)[-1].split(". ")[0]
        return CollectiveFailed(
            f"rank {rank}: {operation} failed because another rank left the job ({cause}); "
            "run the same command to resume from the last checkpoint"
        )
    return None


def torchrun_attempt_store(timeout: timedelta) -> dist.Store | None:
    """torchrun's store with keys of this restart attempt only; None outside torchrun."""
    # torchrun's static rendezvous (--master_addr/--master_port) keeps one store across --max-restarts:
    # a restarted rank would read the dead ranks' addresses and fail to connect (gloo: "Connection
    # refused"; torch issue #135712). A prefix per attempt keeps attempts apart, as torch once did itself.
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False, timeout=timeout
    )
    return dist.PrefixStore(f"gptforge/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


class DistributedStrategy(Strategy):
    """A strategy whose ranks talk through torch.distributed; works with world size 1 as well."""

    def __init__(self, cfg: StrategyConfig, device: str = "auto", precision: str = "auto") -> None:
        default_to_world_of_one()  # so `python scripts/train.py strategy=fsdp` runs the same code as torchrun
        super().__init__(cfg, device=device, precision=precision)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.backend = process_group_backend(cfg.backend, self.device)
        if not dist.is_initialized():
            self.init_process_group(timedelta(seconds=cfg.timeout_s))

    def init_process_group(self, timeout: timedelta) -> None:
        store = torchrun_attempt_store(timeout)
        dist.init_process_group(
            self.backend,
            timeout=timeout,
            device_id=self.device if self.device.type == "cuda" else None,
            **({"store": store, "rank": self.rank, "world_size": self.world_size} if store else {}),
        )

    @contextlib.contextmanager
    def collective(self, operation: str) -> Iterator[None]:
        """A collective inside that times out or loses a rank raises CollectiveFailed naming this rank."""
        try:
            yield
        except RuntimeError as err:
            failure = collective_failure(err, self.rank, operation, self.cfg.timeout_s)
            if failure is None:
                raise
            raise failure from err

    def all_reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.all_reduce_sum(tensor) / self.world_size

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.detach().clone()
        with self.collective("all_reduce of a logged metric"):
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def barrier(self) -> None:
        with self.collective("barrier"):
            dist.barrier()

    def broadcast_flag(self, flag: bool) -> bool:
        value = torch.tensor(float(flag), device=self.device)
        with self.collective("all_reduce of a stop/checkpoint flag"):
            dist.all_reduce(value, op=dist.ReduceOp.MAX)
            return bool(value.item())

    def broadcast_object(self, obj: object) -> object:
        holder = [obj]
        with self.collective("broadcast of an object from rank 0"):
            dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def teardown(self) -> None:
        # Free the model and optimizer while the process group is alive: sharded parameters hold it (and
        # the store it was made on) in reference cycles, which would otherwise be freed only as the
        # interpreter exits, when destroying the store's threads aborts the process ("terminate called
        # without an active exception", seen on 2 of 12 FSDP2 runs).
        self.model = self.train_model = self.optimizer = None
        gc.collect()
        if dist.is_initialized():
            dist.destroy_process_group()
