"""Evaluation: downstream tasks and validation loss for the training loop, `scripts/evaluate.py` and the
lm-evaluation-harness adapter.

tasks.py (task format, loading), prompts.py (k-shot prompts, encoding), scoring.py (log-likelihoods and
greedy answers with the KV cache), metrics.py, evaluator.py (`TaskEvaluator`, ranks), loss.py (val loss),
host.py (`LocalHost`: one process), harness.py (lm-eval model `gptforge`, `python -m gptforge.eval.harness`).

The trainer imports this package, so no module here imports `gptforge.trainer` when it loads except
host.py and harness.py, which nothing in the trainer imports.
"""
