"""The device mesh's shape: sizes resolved from strategy.* keys, one-line errors, data-parallel ranks."""

from __future__ import annotations

import pytest
from conftest import TINY, compose_config

from gptforge.config import StrategyConfig
from gptforge.errors import ConfigError
from gptforge.trainer.plan import World, plan_run
from gptforge.trainer.strategies.mesh import MeshShape, resolve_mesh
from gptforge.trainer.strategies.pipeline import stage_layers


def test_dp_shard_takes_the_ranks_the_others_leave() -> None:
    mesh = resolve_mesh(StrategyConfig(name="fsdp", dp_replicate=2, tp=8), 512)
    assert (mesh.pp, mesh.dp_replicate, mesh.dp_shard, mesh.tp) == (1, 2, 32, 8)
    assert mesh.data_parallel_size == 64


def test_a_mesh_that_does_not_fit_the_world_names_its_keys() -> None:
    with pytest.raises(
        ConfigError, match=r"^strategy.dp_replicate=1 x tp=2 x pp=1 x dp_shard=3 = 6 ranks, but"
    ):
        resolve_mesh(StrategyConfig(name="fsdp", tp=2, dp_shard=3), 4)
    with pytest.raises(ConfigError, match=r"= 3 ranks does not divide the world size 4"):
        resolve_mesh(StrategyConfig(name="fsdp", tp=3), 4)


def test_tp_peers_read_the_same_share_of_the_batch() -> None:
    mesh = MeshShape(dp_replicate=2, dp_shard=2, tp=2)  # ranks numbered dp_replicate, dp_shard, tp
    assert [mesh.data_parallel_rank(rank) for rank in range(8)] == [0, 0, 1, 1, 2, 2, 3, 3]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["strategy=ddp", "strategy.tp=2"],
            r"strategy.tp=2 \(tensor parallelism\) is not supported with ddp",
        ),
        (
            ["strategy=fsdp", "strategy.tp=2", "model.n_head=3", "model.n_embd=48"],
            "does not divide model.n_head=3",
        ),
        (
            ["strategy=ddp", "strategy.pp=2"],
            r"strategy.pp=2 \(pipeline parallelism\) is not supported with ddp; use strategy=fsdp",
        ),
        (
            ["strategy=fsdp", "strategy.pp=4"],
            r"strategy.pp=4 stages need at least 4 blocks, but model.n_layer=2",
        ),
        (
            ["strategy=fsdp", "strategy.pp=2", "model.tie_embeddings=true"],
            r"model.tie_embeddings=True is not supported with strategy.pp=2: .* model.tie_embeddings=false",
        ),
        (
            ["strategy=fsdp", "strategy.pp=2", "model.doc_mask=true"],
            r"model.doc_mask=True is not supported with strategy.pp=2: later stages do not see the token ids",
        ),
        (
            ["strategy=fsdp", "strategy.pp=2", "strategy.pp_schedule=Interleaved1F1B"],
            r"strategy.pp_schedule=Interleaved1F1B runs several stages per rank, .* use 1F1B or GPipe",
        ),
        (
            ["strategy=fsdp", "strategy.pp=2", "strategy.pp_schedule=2F2B"],
            r"strategy.pp_schedule=.2F2B. is not a schedule of torch.distributed.pipelining; use 1F1B",
        ),
        (
            ["strategy=fsdp", "strategy.pp=2", "eval.tasks=[data/tasks/next_line.jsonl]"],
            r"eval.tasks is not supported with strategy.pp=2: no rank holds the whole model",
        ),
        (["strategy=fsdp", "strategy.dp_shard=0"], "strategy.dp_shard=0 is not valid"),
    ],
)
def test_unsupported_combinations_fail_in_one_line(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        compose_config([*TINY, *overrides])
    assert "\n" not in str(err.value)


def test_the_plan_splits_the_batch_over_data_parallel_ranks_only(tmp_path) -> None:
    cfg = compose_config([*TINY, "strategy=fsdp", "strategy.tp=2", "trainer.global_batch_size=8"])
    plan = plan_run(cfg, tmp_path, World(world_size=4, local_world_size=4))
    assert (plan.mesh.data_parallel_size, plan.grad_accum_steps) == (2, 1)
    assert plan.tokens_per_step == 8 * cfg.model.block_size


def test_pipeline_stages_need_as_many_micro_batches_as_stages(tmp_path) -> None:
    cfg = compose_config([*TINY, "strategy=fsdp", "strategy.pp=2", "trainer.global_batch_size=4"])
    with pytest.raises(
        ConfigError, match=r"need at least 2 micro-batches per step to overlap, but the step has 1"
    ):
        plan_run(cfg, tmp_path, World(world_size=2, local_world_size=2))
    cfg = compose_config([*TINY, "strategy=fsdp", "strategy.pp=2", "trainer.global_batch_size=8"])
    plan = plan_run(cfg, tmp_path, World(world_size=2, local_world_size=2))
    assert (plan.mesh.data_parallel_size, plan.grad_accum_steps) == (1, 2)  # both stages read one batch


def test_stages_take_contiguous_blocks_the_last_no_more_than_the_others() -> None:
    assert stage_layers(8, 2) == [range(0, 4), range(4, 8)]
    assert stage_layers(10, 4) == [range(0, 3), range(3, 6), range(6, 8), range(8, 10)]
    assert [len(layers) for layers in stage_layers(80, 8)] == [10] * 8
