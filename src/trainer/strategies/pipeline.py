"""Pipeline parallelism with `torch.distributed.pipelining`: each rank of the mesh's `pp` dimension keeps
a contiguous run of blocks (the first stage also the embeddings, the last the final norm and head) and a
schedule (1F1B by default) moves micro-batches through the stages.

The loop hands a step's micro-batches over one at a time, as to every strategy; `Pipeline` keeps them
and runs the whole step's schedule when the last arrives, because a pipeline needs every micro-batch of
the step in flight at once. Stages keep their parameters' names (`blocks.5.attn.proj.weight`), so the
checkpoint of a pipelined run is the same DCP checkpoint as any fsdp run's and resumes under any mesh.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.pipelining import PipelineStage
from torch.distributed.pipelining.schedules import PipelineScheduleSingle, ScheduleGPipe, get_schedule_class

from gptforge.config import ModelConfig
from gptforge.errors import ConfigError

# the oldest torch whose pipelining runs over gloo here (torch 2.9.1's shape exchange aborts with "Received
# data size doesn't match expected size"); over NCCL the torch floor of pyproject applies
GLOO_PIPELINE_TORCH = "2.13"


def stage_layers(n_layer: int, pp: int) -> list[range]:
    """The blocks of each of `pp` stages: contiguous, as equal as can be; blocks that do not divide evenly
    go to the first stages, since the last also runs the head and the loss over the vocabulary."""
    sizes = [n_layer // pp + (stage < n_layer % pp) for stage in range(pp)]
    starts = [sum(sizes[:stage]) for stage in range(pp)]
    return [range(start, start + size) for start, size in zip(starts, sizes, strict=True)]


def check_pipeline(model: ModelConfig, pp: int, schedule: str, grad_accum_steps: int | None = None) -> None:
    """ConfigError for a model or batch that `pp` stages under `schedule` cannot run."""
    if model.n_layer < pp:
        raise ConfigError(
            f"strategy.pp={pp} stages need at least {pp} blocks, but model.n_layer={model.n_layer}"
        )
    unsupported = {  # key -> (its value, why a pipeline cannot have it)
        "model.tie_embeddings": (
            model.tie_embeddings,
            "the embedding (first stage) and the head (last stage) would share a weight across ranks; "
            "set model.tie_embeddings=false",
        ),
        "model.doc_mask": (
            model.doc_mask,
            "later stages do not see the token ids the mask is made from; set model.doc_mask=false",
        ),
        "model.lora.rank": (model.lora.rank, "fine-tune LoRA adapters with strategy.pp=1"),
    }
    for key, (value, why) in unsupported.items():
        if value:
            raise ConfigError(f"{key}={value} is not supported with strategy.pp={pp}: {why}")
    try:
        schedule_class = get_schedule_class(schedule)
    except ValueError:
        raise ConfigError(
            f"strategy.pp_schedule={schedule!r} is not a schedule of torch.distributed.pipelining; "
            "use 1F1B or GPipe"
        ) from None
    if not issubclass(schedule_class, PipelineScheduleSingle):
        raise ConfigError(
            f"strategy.pp_schedule={schedule} runs several stages per rank, which gptforge does not build "
            "yet; use 1F1B or GPipe"
        )
    if grad_accum_steps is not None and grad_accum_steps < pp:
        raise ConfigError(
            f"strategy.pp={pp} stages need at least {pp} micro-batches per step to overlap, but the step "
            f"has {grad_accum_steps}; raise trainer.global_batch_size or lower trainer.micro_batch_size"
        )


def keep_stage(model: nn.Module, layers: range, first: bool, last: bool) -> None:
    """Remove from `model` (on the meta device) what this stage does not run; the rest keeps its name."""
    model.blocks = nn.ModuleDict({str(i): model.blocks[i] for i in layers})
    if not first:
        model.wte = model.wpe = None
    if not last:
        model.norm_f = model.lm_head = None


class Pipeline:
    """One stage of the pipeline on this rank, the training and evaluation schedules, and the loss.

    `model` is this rank's stage, already parallelised (FSDP, TP) and materialised; the loss of every
    micro-batch lives on the last stage and is broadcast to the other stages of its pipeline, so every
    rank reports its replica's loss (the loop averages it over all ranks).
    """

    def __init__(
        self, model: nn.Module, mesh: DeviceMesh, device: torch.device, schedule: str, n_microbatches: int
    ) -> None:
        if dist.get_backend() == "gloo" and torch.__version__ < GLOO_PIPELINE_TORCH:
            raise ConfigError(
                f"strategy.pp={mesh['pp'].size()} over gloo (CPU) needs torch >= {GLOO_PIPELINE_TORCH}: the "
                f"pipeline's first-step shape exchange of torch {torch.__version__} fails over gloo; "
                "upgrade torch, or use strategy.pp=1"
            )
        self.model = model
        self.group = mesh["pp"].get_group()
        self.stage_index, self.num_stages = mesh["pp"].get_local_rank(), mesh["pp"].size()
        self.is_first, self.is_last = self.stage_index == 0, self.stage_index == self.num_stages - 1
        self.last_stage_rank = dist.get_global_rank(self.group, self.num_stages - 1)
        self.device = device
        self.loss_scale = 1.0
        self.losses: list[torch.Tensor] = []  # unscaled, one per micro-batch of the step
        self.pending: list[tuple[torch.Tensor, torch.Tensor]] = []

        # GPT.forward returns (output, loss); a stage hands on one tensor, hidden states or the last
        # stage's logits (the schedule computes the loss). After FSDP's hooks, which see both.
        model.register_forward_hook(lambda module, args, output: output[0])

        def make_stage() -> PipelineStage:  # shapes are inferred from the first micro-batch
            return PipelineStage(model, self.stage_index, self.num_stages, device, group=self.group)

        # sum of `loss * loss_scale` over micro-batches: the loop's scale already divides by their count
        self.train_schedule = get_schedule_class(schedule)(
            make_stage(), n_microbatches, loss_fn=self._scaled_loss, scale_grads=False
        )
        # evaluation sees one micro-batch at a time: a stage of its own, so buffers are its own too
        try:
            self.eval_schedule = ScheduleGPipe(make_stage(), 1, loss_fn=self._loss, scale_grads=False)
            self.eval_copies = 1
        except ValueError:  # torch 2.9 wants as many micro-batches as stages: the batch goes that often
            self.eval_copies = self.num_stages
            self.eval_schedule = ScheduleGPipe(
                make_stage(), self.eval_copies, loss_fn=self._loss, scale_grads=False
            )
        # the losses are kept by the loss function; torch >= 2.10 can also leave the logits unmerged
        takes_it = "return_outputs" in inspect.signature(PipelineScheduleSingle.step).parameters
        self.no_outputs = {"return_outputs": False} if takes_it else {}

    def _loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss = self.model.loss(logits, targets)
        self.losses.append(loss.detach())
        return loss

    def _scaled_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self._loss(logits, targets) * self.loss_scale

    def forward_backward(
        self, input_ids: torch.Tensor, targets: torch.Tensor, loss_scale: float, last_micro: bool
    ) -> torch.Tensor:
        """Keep the micro-batch; on the step's last, run the schedule over all of them and return the sum
        of their losses (zero for the others, so the loop's sum over the step is the same)."""
        self.pending.append((input_ids, targets))
        if not last_micro:
            return torch.zeros((), device=self.device)
        inputs = torch.cat([x for x, _ in self.pending])
        batch_targets = torch.cat([y for _, y in self.pending])
        n_microbatches, self.pending, self.losses, self.loss_scale = len(self.pending), [], [], loss_scale
        self._run(self.train_schedule.step, inputs, batch_targets)
        return self._replica_loss(n_microbatches)

    def eval_loss(self, input_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        self.losses, copies = [], self.eval_copies
        self._run(self.eval_schedule.eval, input_ids.repeat(copies, 1), targets.repeat(copies, 1))
        return self._replica_loss(1)  # the last copy's (all are the same)

    def _run(self, run: Callable[..., object], inputs: torch.Tensor, targets: torch.Tensor) -> None:
        args = (inputs,) if self.is_first else ()
        run(*args, target=targets if self.is_last else None, **self.no_outputs)

    def _replica_loss(self, n_microbatches: int) -> torch.Tensor:
        """The summed micro-batch losses of the last stage, on every stage of this pipeline."""
        # the last ones: on its first step a schedule also calls the loss on stand-in tensors, to learn
        # the shapes of the gradients (torch >= 2.10)
        losses = self.losses[-n_microbatches:]
        loss = torch.stack(losses).sum() if self.is_last else torch.zeros((), device=self.device)
        dist.broadcast(loss, src=self.last_stage_rank, group=self.group)
        return loss

    def combine_norm(self, local_norm: torch.Tensor) -> torch.Tensor:
        """The gradient norm over every stage from this stage's (each stage holds different weights)."""
        squared = local_norm.square()
        dist.all_reduce(squared, op=dist.ReduceOp.SUM, group=self.group)
        return squared.sqrt()

    def gather_stages(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every stage's `state` merged on global rank 0 (empty elsewhere); only rank 0's pipeline sends."""
        if 0 not in dist.get_process_group_ranks(self.group):
            return {}
        stages = [None] * self.num_stages if dist.get_rank() == 0 else None
        dist.gather_object(state, stages, dst=0, group=self.group)
        return {key: value for part in stages or [] for key, value in part.items()}
