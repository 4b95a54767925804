"""Evaluation: `python -m flanrec.eval` (the job is `flanrec.eval.job`)."""
