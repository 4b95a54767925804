r"""Offline inference over a SeqIO task split: `python -m flanrec.infer`.

    python -m flanrec.infer --gin_file=runs/infer.gin \
      --gin.CHECKPOINT_PATH=runs/ml100k_tiny --gin.MIXTURE_OR_TASK_NAME=ml100k_seq_seqidx \
      --gin.INFER_OUTPUT_DIR=runs/ml100k_tiny/infer --gin.MODE=predict --gin.NUM_BEAMS=20

Macros (gin/runs/infer.gin): CHECKPOINT_PATH, MIXTURE_OR_TASK_NAME, MIXTURE_OR_TASK_MODULE,
INFER_OUTPUT_DIR, DATA_DIR, TASK_FEATURE_LENGTHS, SPLIT, BATCH_SIZE, MODE
(predict | score | rating | decode), NUM_BEAMS, MASK_SEEN, CONSTRAINED, LENGTH_PENALTY,
CHUNK_SIZE, RANKER. MODE=predict ranks items on an item task and decodes freely on a task
whose targets are text (a family such as tasks/next_genre.py, a JSON-lines task); MODE=decode
decodes freely on any task (T5X's predict: greedy with NUM_BEAMS=1, else beam search over
the whole vocabulary, up to TASK_FEATURE_LENGTHS['targets'] tokens). RANKER (auto |
one_pass | beam_search): how predict mode ranks items; auto takes one forward pass when every
item is one token and the target is one item after a decoder prefix (the seqrec family), and
trie-constrained beam search otherwise; both give the same top-K with the same scores.

Output, one JSON object per example, in
`INFER_OUTPUT_DIR/{task}-{mode}.jsonl-{host:05d}-of-{hosts:05d}`: task, split, mode, index
(position in the split), user, targets, target_item, template_idx, template_type, and per mode
  predict: items, ids, scores (best first, distinct, at most NUM_BEAMS), invalid, duplicates
  score:   candidates, scores (summed log-likelihood); binary tasks also p_yes, label
  rating:  expected_rating, rating_probs {"1": p, ...}, target_rating
  decode:  prediction (the top beam's text), beams, scores (best first), unfinished (beams
           that hit the length limit without EOS); `flanrec.eval` runs the task's own
           postprocess_fn and metric_fns on them (T5X's infer-eval)
and T5X's own fields (t5x/infer.py), so T5X post-processing reads the files unchanged:
inputs {"inputs_pretokenized", "targets_pretokenized"}, prediction (the decoded top answer:
an item's ID string, a rating), aux {"scores": its log-likelihood}; score mode also score (the
log-likelihood of the example's own target).
Rerunning the same command resumes: finished chunks are kept, the rest computed. A rerun
whose CHECKPOINT_PATH now resolves to another checkpoint (a MODEL_DIR that gained a step) is
refused, since one file would mix two models; OVERWRITE=True recomputes everything. Next to
each shard, `{task}-{mode}-manifest-{host:05d}-of-{hosts:05d}.json` records the checkpoint
(step, params sha256), the settings and the gin config that produced it. INFER_OUTPUT_DIR may
be local or gs://; a directory holding files flanrec did not write is refused.

`--gin_file=runs/infer.gin` (the default) is flanrec's own config, found on the gin search
path from any directory, also from an installed wheel.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import gin

from flanrec.data.layout import PREPARE_FILE
from flanrec.files import storage
from flanrec.infer.run import InferenceOptions, run_inference, validate_options
from flanrec.infer.taskinfo import InferenceConfigError

log = logging.getLogger("flanrec.infer")

def _data_dirs(data_dir: str | None) -> list[str]:
    """DATA_DIR as the prepared dir to register (when no registered task reads it yet), so
    `--gin.DATA_DIR=...` works without MIXTURE_OR_TASK_MODULE finding it; [] without one."""
    if not data_dir:
        return []
    path = storage.normalize(data_dir)
    if not storage.exists(storage.join(path, PREPARE_FILE)):
        raise InferenceConfigError(f"DATA_DIR {data_dir}: no {PREPARE_FILE} (not a "
                                   "`python -m flanrec.prepare` output)")
    return [path]


def infer(*, checkpoint_path: str = gin.REQUIRED, mixture_or_task_name: str = gin.REQUIRED,
          output_dir: str = gin.REQUIRED, task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
          data_dir: str | None = None, split: str = "test", batch_size: int = 32,
          mode: str = "predict", num_beams: int = 20, mask_seen: bool = True,
          constrained: bool = True, length_penalty: float = 0.0, chunk_size: int = 256,
          candidate_block: int = 256, dtype: str | None = None, overwrite: bool = False,
          ranker: str = "auto") -> list[dict[str, Any]]:
    """Run the inference job from gin; returns one summary per task (path, examples, ...).

    `overwrite`: recompute every task from scratch instead of resuming (OVERWRITE=True).
    `ranker` (RANKER): 'auto' | 'one_pass' | 'beam_search', see `InferenceOptions.ranker`."""
    opts = InferenceOptions(
        output_dir=str(output_dir), task_feature_lengths=dict(task_feature_lengths),
        split=str(split), batch_size=int(batch_size), mode=str(mode),
        num_beams=int(num_beams), mask_seen=bool(mask_seen), constrained=bool(constrained),
        length_penalty=float(length_penalty), chunk_size=int(chunk_size),
        candidate_block=int(candidate_block), overwrite=bool(overwrite), ranker=str(ranker))

    validate_options(opts)  # a MODE typo fails before any data or checkpoint is read
    return run_inference(str(checkpoint_path), str(mixture_or_task_name), opts,
                         _data_dirs(data_dir), dtype,
                         {"gin_config": gin.config_str(), "task_module": _task_module()})


def _task_module() -> str | None:
    """MIXTURE_OR_TASK_MODULE, recorded in each shard's manifest: `flanrec.eval` imports it
    to find the task whose metric fns and targets score a decode run."""
    try:
        value = gin.query_parameter("%MIXTURE_OR_TASK_MODULE")
    except ValueError:
        return None
    return str(value) if value else None
