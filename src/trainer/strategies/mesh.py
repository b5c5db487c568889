"""The device mesh: how a job's ranks are laid out over pipeline, data and tensor parallelism.

Ranks are numbered pp-major, then dp_replicate, dp_shard, tp (torchtitan's order): the ranks of one
tensor-parallel group are neighbours, so on a GPU node they share NVLink, and data-parallel groups span
nodes. One `DeviceMesh` with these named dimensions is built once; every parallelism takes its slice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from gptforge.errors import ConfigError

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh

    from gptforge.config import StrategyConfig

MESH_DIMS = ("pp", "dp_replicate", "dp_shard", "tp")  # outermost first


@dataclass(frozen=True)
class MeshShape:
    """Ranks along each mesh dimension; their product is the world size."""

    pp: int = 1
    dp_replicate: int = 1
    dp_shard: int = 1
    tp: int = 1

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(getattr(self, dim) for dim in MESH_DIMS)

    @property
    def world_size(self) -> int:
        size = 1
        for dim_size in self.sizes:
            size *= dim_size
        return size

    @property
    def data_parallel_size(self) -> int:
        """Ranks that see different data: the model replicas (each may be sharded, split or staged)."""
        return self.dp_replicate * self.dp_shard

    def coordinates(self, rank: int) -> dict[str, int]:
        """`rank`'s index along each dimension."""
        coords = {}
        for dim in reversed(MESH_DIMS):
            size = getattr(self, dim)
            coords[dim] = rank % size
            rank //= size
        return coords

    def data_parallel_rank(self, rank: int) -> int:
        """Which share of each global batch `rank` trains on (the same for its tp and pp peers)."""
        coords = self.coordinates(rank)
        return coords["dp_replicate"] * self.dp_shard + coords["dp_shard"]

    def describe(self) -> str:
        used = [f"{dim}={getattr(self, dim)}" for dim in MESH_DIMS if getattr(self, dim) > 1]
        return " x ".join(used) if used else "one rank"


def resolve_mesh(cfg: StrategyConfig, world_size: int) -> MeshShape:
    """The mesh of `strategy.dp_replicate, dp_shard, tp, pp` on `world_size` ranks; dp_shard=-1 takes
    the ranks the others leave. ConfigError naming the keys when they do not multiply to the world size."""
    fixed = cfg.dp_replicate * cfg.tp * cfg.pp
    dp_shard = cfg.dp_shard
    keys = f"strategy.dp_replicate={cfg.dp_replicate} x tp={cfg.tp} x pp={cfg.pp}"
    if dp_shard == -1:
        if world_size % fixed:
            raise ConfigError(
                f"{keys} = {fixed} ranks does not divide the world size {world_size} (NPROC x NNODES); "
                f"choose sizes whose product divides {world_size}"
            )
        dp_shard = world_size // fixed
    elif fixed * dp_shard != world_size:
        raise ConfigError(
            f"{keys} x dp_shard={dp_shard} = {fixed * dp_shard} ranks, but the world size is {world_size} "
            "(NPROC x NNODES); the product must equal it (strategy.dp_shard=-1 takes the rest)"
        )
    return MeshShape(pp=cfg.pp, dp_replicate=cfg.dp_replicate, dp_shard=dp_shard, tp=cfg.tp)


def build_device_mesh(shape: MeshShape, device_type: str) -> DeviceMesh:
    """One DeviceMesh over all ranks with the named dimensions of `shape` (sizes of 1 included)."""
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device_type, shape.sizes, mesh_dim_names=MESH_DIMS)
