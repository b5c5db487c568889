"""Write one plain safetensors state dict (model weights) from a checkpoint of any strategy and world size.

    python scripts/consolidate.py runs/my_run/checkpoints/step_2000 [--out model.safetensors]

The argument may also be a run directory or its checkpoints/ folder (their newest checkpoint). Optimizer
state is not carried over: start a new run from the file with `trainer.init_from=<file>`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gptforge.cli import HelpFormatter, run_cli
from gptforge.trainer.checkpoint import consolidate_checkpoint, save_consolidated


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="a step_<N> dir, checkpoints/ folder or run dir")
    parser.add_argument("--out", type=Path, help="output file (default: <step dir>.safetensors beside it)")
    args = parser.parse_args(argv)
    state, metadata = consolidate_checkpoint(args.checkpoint)
    out = args.out or Path(metadata["source"] + ".safetensors")
    save_consolidated(state, out, metadata)
    params = sum(t.numel() for t in state.values())
    print(f"wrote {out}: {len(state)} tensors, {params:,} values, from a {metadata['strategy']} checkpoint")
    return out


if __name__ == "__main__":
    run_cli(main)
