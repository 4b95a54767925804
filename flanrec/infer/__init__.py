"""Offline inference: constrained top-K prediction, candidate scoring, expected ratings.

    python -m flanrec.infer --gin_file=runs/infer.gin ...     (the job: `flanrec.infer.job`)
    from flanrec.infer.modes import predict_topk, score_candidates, expected_rating
    from flanrec.infer.run import InferenceOptions, run_inference

Its output format is the JSONL contract that `flanrec.eval` reads (`flanrec.files.predictions`).
This package module imports nothing, so `python -m flanrec.infer` starts (and re-executes under
tcmalloc) before JAX is imported.
"""
