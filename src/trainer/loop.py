"""The training loop: a story of steps, evaluations and checkpoints, whatever the backend."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from omegaconf import OmegaConf

from gptforge.data import RandomWindowLoader, Tokenizer
from gptforge.eval.evaluator import TaskEvaluator, metric_record
from gptforge.eval.loss import loss_sums, perplexity
from gptforge.models import generate
from gptforge.preemption import PreemptionWatcher, watch_for_preemption
from gptforge.trainer import checkpoint as ckpt
from gptforge.trainer.callbacks import Callback, default_callbacks
from gptforge.trainer.faults import Preempted, StepGuard, TrainingStopped
from gptforge.trainer.lock import RunDirectoryLock
from gptforge.trainer.metrics import BuildMemory, ThroughputMeter, peak_flops_per_sec
from gptforge.trainer.plan import RunPlan
from gptforge.trainer.profiler import StepProfiler
from gptforge.trainer.resume import config_hash
from gptforge.trainer.schedules import LRSchedule
from gptforge.trainer.strategies import Strategy
from gptforge.trainer.summary import RunSummary, describe_run


def finished_message(run_dir: Path, step: int, max_steps: int) -> str:
    return (
        f"gptforge: the run in {run_dir} is finished (step {step} of trainer.max_steps={max_steps}); nothing "
        f"to do. To train on, raise trainer.max_steps (e.g. trainer.max_steps={2 * max_steps}; with a cosine "
        f"or linear decay also set scheduler.decay_steps={max_steps}, or train with scheduler=wsd), or use a "
        "new out_dir"
    )


class Trainer:
    """Drives a strategy over the data: step, log, evaluate, checkpoint, resume."""

    def __init__(
        self,
        plan: RunPlan,
        strategy: Strategy,
        tokenizer: Tokenizer,
        train_loader: RandomWindowLoader,
        make_val_batches: Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]] | None,
        flops_per_token: int,
        task_evaluator: TaskEvaluator | None = None,
        run_lock: RunDirectoryLock | None = None,
        callbacks: list[Callback] | None = None,
        build_memory: BuildMemory | None = None,
    ) -> None:
        cfg = plan.cfg
        self.plan = plan
        self.cfg = cfg
        self.tcfg = cfg.trainer
        self.run_dir = plan.run_dir
        self.strategy = strategy
        self.tokenizer = tokenizer
        self.train_loader = train_loader
        self.make_val_batches = make_val_batches
        self.grad_accum_steps = plan.grad_accum_steps
        self.resume_from = plan.resume_from  # found and checked by plan_run before the build
        self.task_evaluator = task_evaluator  # downstream tasks (eval.tasks); None: none configured
        self.run_lock = run_lock or RunDirectoryLock(self.run_dir)  # held for the run's life (main rank)
        self.config_hash = config_hash(OmegaConf.to_container(OmegaConf.structured(cfg)), strategy.world_size)
        self.schedule = LRSchedule(cfg.scheduler, cfg.optim.lr, self.tcfg.max_steps)
        self.checkpointer = ckpt.Checkpointer(
            self.run_dir / ckpt.CHECKPOINTS,
            self.tcfg.keep_last,
            strategy.is_main,
            strategy.barrier,
            strategy.broadcast_flag,
        )
        self.checkpointer.resume_from(plan.resume_from)
        self.tokens_per_step = train_loader.global_batch_size * cfg.model.block_size
        peak = peak_flops_per_sec(strategy.device, self.tcfg.peak_flops_per_sec)
        self.meter = ThroughputMeter(flops_per_token, peak, strategy.world_size, build_memory=build_memory)
        self.profiler = StepProfiler(self.tcfg, self.run_dir / "profile", strategy.rank, strategy.device)
        self.guard = StepGuard(self.tcfg)
        self.callbacks = default_callbacks(cfg) if callbacks is None else callbacks
        self.step = 0
        self.tokens_seen = 0
        self.saved_step: int | None = None  # the step of the checkpoint this process last wrote or resumed
        self.step_loss_scale = 1.0  # set by callbacks in on_step_start (fault injection), for one step

    def fit(self, preemption: PreemptionWatcher | None = None) -> dict:
        """Train to `trainer.max_steps` (resuming if a checkpoint exists); returns the last metrics.

        A run that is already finished says so and returns {} without training, evaluating or saving.
        `preemption` (default: the process's watcher, which scripts/train.py starts on its first line)
        turns SIGTERM / SIGUSR1 into a checkpoint and exit code 75, whenever it arrived.
        """
        preemption = preemption or watch_for_preemption()
        self.resume()
        if preemption.requested(self.strategy.broadcast_flag):  # during start-up: nothing new to save
            raise Preempted.before_training(self.step, preemption.signal_name)
        if self.step >= self.tcfg.max_steps:
            if self.strategy.is_main:
                print(finished_message(self.run_dir, self.step, self.tcfg.max_steps), flush=True)
            return {}
        self._call("on_fit_start")
        last: dict = {}
        self.meter.reset()
        self.profiler.start()
        try:
            while self.step < self.tcfg.max_steps:
                last |= self.run_step()
                if preemption.requested(self.strategy.broadcast_flag):
                    self.save()
                    raise Preempted.at(self.step, preemption.signal_name)
            evaluated_last_step = self.tcfg.eval_every and self.step % self.tcfg.eval_every == 0
            if not evaluated_last_step:  # every run ends with an evaluation, eval_every=0 included
                last |= self.evaluate()
            if self.task_evaluator is not None and self.task_evaluator.due_at_end(self.step):
                last |= self.evaluate_tasks()
            self.save()
        finally:
            self.profiler.close()
            self._call("on_fit_end")
        return last

    def run_step(self) -> dict:
        """One optimizer step, then the metrics, evaluation and checkpoint that are due."""
        try:
            loss, grad_norm, lr = self.train_step()
        except TrainingStopped:
            self.save()  # the weights are still those of the last good step
            raise
        self.step += 1
        self.tokens_seen += self.tokens_per_step
        self.meter.update(self.tokens_per_step)
        if self.profiler.step(self.step):
            self.meter.reset()  # writing the trace is not training throughput
        last: dict = {}
        # the first step too: a plot starts at the initial loss, and warm-up shows
        if self.step == 1 or self.step % self.tcfg.log_every == 0 or self.step == self.tcfg.max_steps:
            last = self.log_train(loss, grad_norm, lr)
        if self.tcfg.eval_every and self.step % self.tcfg.eval_every == 0:
            last |= self.evaluate()
        if self.task_evaluator is not None and self.task_evaluator.due(self.step):
            last |= self.evaluate_tasks()
        if self.tcfg.checkpoint_every and self.step % self.tcfg.checkpoint_every == 0:
            self.save()
        return last

    def train_step(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        """One optimizer step over `grad_accum_steps` micro-batches; returns loss and grad norm tensors."""
        lr = self.schedule(self.step)
        self.step_loss_scale = 1.0
        self._call("on_step_start")
        loss_scale = self.step_loss_scale / self.grad_accum_steps
        loss_sum = torch.zeros((), device=self.strategy.device)
        for micro in range(self.grad_accum_steps):
            with self.meter.data_wait():
                input_ids, targets = next(self.train_loader)
            input_ids, targets = self.strategy.to_device(input_ids), self.strategy.to_device(targets)
            last_micro = micro == self.grad_accum_steps - 1
            loss_sum += self.strategy.forward_backward(input_ids, targets, loss_scale, last_micro)
        loss = loss_sum / self.grad_accum_steps
        global_loss = spike = None
        if self.tcfg.spike_threshold:  # costs a host sync per step, so only when asked for
            global_loss = self.strategy.all_reduce_mean(loss).item()
            spike = self.guard.is_spike(global_loss)
        skip = bool(spike) and self.tcfg.spike_policy == "skip"
        grad_norm, stepped = self.strategy.clip_and_step(lr, skip=skip)
        if spike or not stepped:
            event = "loss_spike" if spike else "nonfinite_grad_norm"
            self._emit(
                {"step": self.step + 1, "event": event, "skipped": not stepped, "event_loss": global_loss}
            )
        self.guard.after_step(self.step, global_loss, stepped, bool(spike))
        return loss, grad_norm, lr

    def log_train(self, loss: torch.Tensor, grad_norm: torch.Tensor, lr: float) -> dict:
        record = {
            "step": self.step,
            "max_steps": self.tcfg.max_steps,
            "loss": self.strategy.all_reduce_mean(loss).item(),
            "lr": lr,
            "grad_norm": grad_norm.item(),
            "tokens_seen": self.tokens_seen,
            **self.meter.report(self.strategy),  # after the .item() syncs above, so times are complete
        }
        record["eta_s"] = record["step_time_s"] * (self.tcfg.max_steps - self.step)
        self._emit(record)
        return record

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Validation loss over `trainer.eval_batches` batches of every rank, per scored token."""
        if self.make_val_batches is None:
            return {}
        with self.meter.paused():  # evaluation time is not training throughput
            self.strategy.eval_mode()
            to_device = self.strategy.to_device
            total, tokens = loss_sums(
                lambda x, y: self.strategy.eval_loss(to_device(x), to_device(y)), self.make_val_batches()
            )
            self.strategy.train_mode()
            sums = self.strategy.all_reduce_sum(torch.stack([total, torch.full_like(total, tokens)]))
            val_loss = (sums[0] / sums[1]).item()
            record = {"step": self.step, "val_loss": val_loss, "val_ppl": perplexity(val_loss)}
            self._emit(record)
        return record

    def evaluate_tasks(self) -> dict:
        """Downstream task scores (eval.tasks): every rank scores its share, rank 0 logs the totals."""
        with self.meter.paused():  # not training throughput either
            record = {"step": self.step, **metric_record(self.task_evaluator.evaluate(self.strategy))}
            self._emit(record)
        return record

    def save(self) -> None:
        """Checkpoint this step, once: a run ending or preempted right after a due save writes no second."""
        if self.saved_step == self.step:
            return

        def write_shards(directory: Path) -> None:
            self.strategy.save(directory)
            rank_state = {"rng": ckpt.capture_rng(), "data": self.train_loader.state_dict()}
            ckpt.save_rank_state(directory, self.strategy.rank, rank_state)
            self._call("on_save", directory)

        def write_main(directory: Path) -> None:
            state = {
                "step": self.step,
                "tokens_seen": self.tokens_seen,
                "world_size": self.strategy.world_size,
                "mesh": list(self.strategy.mesh_shape.sizes),  # pp, dp_replicate, dp_shard, tp
                "global_batch_size": self.train_loader.global_batch_size,
                "config_hash": self.config_hash,
                "step_guard": self.guard.state_dict(),  # the same on every rank: it judges the global loss
                "callbacks": {cb.name: cb.state_dict() for cb in self.callbacks if cb.name},
            }
            ckpt.write_trainer_state(directory, state)
            ckpt.save_run_files(directory, self.cfg, self.tokenizer)

        with self.meter.paused():  # nor is writing a checkpoint
            self.checkpointer.save(self.step, write_shards, write_main)
        self.saved_step = self.step

    def resume(self) -> None:
        """Continue from `resume_from`, the checkpoint `trainer.resume=auto` found (None: start fresh)."""
        directory = self.resume_from
        if directory is None:
            return
        self.strategy.load(directory)
        state = ckpt.read_trainer_state(directory)
        self.step, self.tokens_seen = state["step"], state["tokens_seen"]
        self.saved_step = self.step
        if "step_guard" in state:  # checkpoints of earlier versions start with an empty window
            self.guard.load_state_dict(state["step_guard"])
        for callback in self.callbacks:
            if callback.name in state.get("callbacks", {}):
                callback.load_state_dict(state["callbacks"][callback.name])
        same_ranks = state.get("world_size", 1) == self.strategy.world_size and state.get(
            "mesh", list(self.strategy.mesh_shape.sizes)
        ) == list(self.strategy.mesh_shape.sizes)
        # another layout only resumes data whose position is the same on every rank (checked before)
        rank_state = ckpt.load_rank_state(directory, self.strategy.rank if same_ranks else 0)
        self.train_loader.load_state_dict(rank_state["data"])
        if same_ranks:
            ckpt.restore_rng(rank_state["rng"])
        else:
            ckpt.reseed_rng(self.cfg.seed, self.strategy.rank, self.step)
        if self.strategy.is_main:
            print(f"gptforge: resumed from {directory} at step {self.step}", flush=True)

    def sample(self, max_new_tokens: int, prompt: str = "\n", temperature: float = 0.8) -> str:
        """Text sampled from the model (call on every rank), for a first look at what the run learned."""
        model = self.strategy.unwrapped_model
        self.strategy.eval_mode()
        prompt_ids = torch.tensor([self.tokenizer.encode(prompt)], device=self.strategy.device)
        generator = torch.Generator(device=self.strategy.device).manual_seed(self.cfg.seed)
        with self.strategy.autocast():
            out = generate(
                model, prompt_ids, max_new_tokens, temperature=temperature, top_k=200, generator=generator
            )
        self.strategy.train_mode()
        return self.tokenizer.decode(out[0].tolist())

    def close(self) -> None:
        """End the run: the strategy's processes and memory, and the run directory's lock."""
        self.strategy.teardown()
        self.run_lock.release()

    def summary(self) -> RunSummary:
        """What this run is about to do; the console prints it and wandb / TensorBoard keep it."""
        return describe_run(
            self.plan,
            self.strategy.precision_name,
            self.meter.flops_per_token,
            self.meter.peak_per_device,
            self.step,
            self.train_loader,
        )

    def _emit(self, record: dict) -> None:
        self._call("on_record", record)

    def _call(self, hook: str, *args: object) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)
