"""Training: `python -m flanrec.train` (the job reads top to bottom in `flanrec.train.job`)."""
