"""Offline inference: constrained top-K prediction, candidate scoring, expected ratings.

    from flanrec.infer import predict_topk, score_candidates, run_inference

The job entry point is `python -m flanrec.infer` (gin: gin/runs/infer.gin); its output
format is the JSONL contract that `flanrec.eval` reads (see flanrec/infer.py).
"""

from flanrec.files.predictions import MODES
from flanrec.infer.modes import (
    ItemDecoder,
    TriePredictor,
    expected_rating,
    items_from_beams,
    predict_topk,
    score_candidates,
)
from flanrec.infer.run import InferenceOptions, run_inference
from flanrec.infer.taskinfo import InferenceConfigError

__all__ = ["MODES", "InferenceConfigError", "InferenceOptions", "ItemDecoder", "TriePredictor",
           "expected_rating", "items_from_beams", "predict_topk", "run_inference",
           "score_candidates"]
