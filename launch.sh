#!/usr/bin/env bash
# One entry for every scale; all arguments are Hydra overrides passed to scripts/train.py.
#
#   ./launch.sh                                          # default run (tiny Shakespeare), sets up .venv on first use
#   ./launch.sh experiment=smoke trainer.max_steps=100   # any config value from the command line
#   NPROC=8 ./launch.sh strategy=ddp                     # 8 processes on this machine (torchrun)
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 NPROC=8 ./launch.sh ...   # run on every node
#   LAUNCHER=deepspeed NPROC=8 ./launch.sh strategy=deepspeed_zero2
#   sbatch scripts/slurm_train.sbatch strategy=fsdp     # SLURM: one launch.sh per node (see the file)
#   DRY_RUN=1 ./launch.sh ...                            # print the command and the plan, check everything, do not train
#
# Environment: LAUNCHER (python|torchrun|deepspeed; default python for one process, torchrun otherwise),
# NPROC (processes per node, default 1), NNODES (default 1, or SLURM_NNODES inside an allocation),
# NODE_RANK (default 0, or SLURM_NODEID), MASTER_ADDR (default 127.0.0.1, or the allocation's first host),
# MASTER_PORT (default 29500), PYTHON (interpreter; default .venv/bin/python, created by scripts/setup.sh).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

if [ -z "${PYTHON:-}" ]; then
  if [ -x "$root/.venv/bin/python" ] && "$root/.venv/bin/python" -c "import gptforge" 2>/dev/null; then
    PYTHON="$root/.venv/bin/python"
  elif [ -n "${VIRTUAL_ENV:-}${CONDA_PREFIX:-}" ] && python3 -c "import gptforge" 2>/dev/null; then
    PYTHON=python3
  else
    bash "$root/scripts/setup.sh"
    PYTHON="$root/.venv/bin/python"
  fi
fi

if [ -n "${SLURM_JOB_ID:-}" ] && [ -z "${NNODES:-}" ]; then
  NNODES=${SLURM_NNODES:-1}
  NODE_RANK=${NODE_RANK:-${SLURM_NODEID:-0}}
  MASTER_ADDR=${MASTER_ADDR:-$(scontrol show hostnames "${SLURM_JOB_NODELIST}" 2>/dev/null | head -n 1)}
fi
NPROC=${NPROC:-1}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
if [ "$NPROC" = 1 ] && [ "$NNODES" = 1 ]; then default_launcher=python; else default_launcher=torchrun; fi
LAUNCHER=${LAUNCHER:-$default_launcher}

script="$root/scripts/train.py"
case "$LAUNCHER" in
  python)
    cmd=("$PYTHON" "$script") ;;
  torchrun)
    cmd=("$PYTHON" -m torch.distributed.run --nproc_per_node="$NPROC" --nnodes="$NNODES" --node_rank="$NODE_RANK"
         --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT" "$script") ;;
  deepspeed)
    # DeepSpeed's launcher narrates every step at INFO; keep its errors only unless GPTFORGE_DEBUG is set
    log_level=error
    if [ -n "${GPTFORGE_DEBUG:-}" ] && [ "${GPTFORGE_DEBUG}" != 0 ]; then log_level=info; fi
    if ! { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }; then
      export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}  # no GPU: say so, rather than have DeepSpeed warn it guessed
    fi
    cmd=("$PYTHON" -m deepspeed.launcher.runner --log_level="$log_level" --no_local_rank --num_gpus="$NPROC"
         --num_nodes="$NNODES" --node_rank="$NODE_RANK" --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT"
         "$script") ;;
  *)
    echo "error: LAUNCHER=$LAUNCHER is not valid; choose python, torchrun or deepspeed" >&2
    exit 2 ;;
esac

if [ -n "${DRY_RUN:-}" ] && [ "${DRY_RUN}" != 0 ]; then
  echo "would run: ${cmd[*]} $*"
  # one process plans for the whole job: its world size and this node's process count
  WORLD_SIZE=$((NPROC * NNODES)) LOCAL_WORLD_SIZE=$NPROC RANK=0 LOCAL_RANK=0 \
    exec "$PYTHON" "$script" "$@" dry_run=true
fi
if [ "$LAUNCHER" = python ]; then
  exec "${cmd[@]}" "$@"
fi

# A launcher reports a rank that exited 75 (preempted: checkpoint saved) as a failure of its own. Each rank
# writes its exit status into GPTFORGE_EXIT_DIR; when every rank of this node exited 75, so does this
# script, which is what a scheduler's requeue logic reads. SIGTERM/SIGUSR1 reaching this script (SLURM
# signals the whole job) are passed on to the launcher, which passes them to the ranks.
GPTFORGE_EXIT_DIR=$(mktemp -d "${TMPDIR:-/tmp}/gptforge-exit.XXXXXX")
export GPTFORGE_EXIT_DIR
trap 'rm -rf "$GPTFORGE_EXIT_DIR"' EXIT
"${cmd[@]}" "$@" &
launcher_pid=$!
trap 'kill -TERM "$launcher_pid" 2>/dev/null || true' TERM
trap 'kill -USR1 "$launcher_pid" 2>/dev/null || true' USR1
while :; do
  status=0
  wait "$launcher_pid" || status=$?
  kill -0 "$launcher_pid" 2>/dev/null || break  # a trapped signal ends `wait` early: then wait again
done
if [ "$status" != 0 ]; then
  preempted=0
  for rank_status in "$GPTFORGE_EXIT_DIR"/rank_*; do
    [ -f "$rank_status" ] && [ "$(cat "$rank_status")" = 75 ] && preempted=$((preempted + 1))
  done
  if [ "$preempted" -gt 0 ] && [ "$preempted" = "$(ls "$GPTFORGE_EXIT_DIR" | wc -l)" ] \
      && [ "$preempted" -ge "$NPROC" ]; then
    echo "gptforge: preempted: all $preempted ranks on this node saved the checkpoint and exited 75" >&2
    status=75
  fi
fi
exit "$status"
