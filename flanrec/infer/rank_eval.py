"""Rank-metric validation inside training: T5X's infer-eval, for recommendation.

Every ``EVAL_PERIOD`` steps the trainer ranks the whole catalogue for each validation user
with the very code ``flanrec.infer`` uses (``TaskRunner``: for one-token items after a
decoder prefix, as in the seqrec family, one forward pass and a top-K over the catalogue's
tokens; otherwise trie-constrained beam search; seen items masked), and scores the lists with
``flanrec.metrics.user_ranking_metrics``, the functions ``flanrec.eval`` reports. So the
validation NDCG@10 that picks the best checkpoint is exactly the number a user would get by
running ``flanrec.infer`` + ``flanrec.eval`` on that checkpoint's validation split.

The split is read once (tokenized, in memory: a few thousand short examples) and sharded by
host like ``flanrec.infer``; each host ranks its users and the metric *sums* are added across
hosts, so every host sees the same numbers and makes the same early-stopping decision.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from flanrec import metrics as metrics_lib
from flanrec.infer import run as job
from flanrec.infer import taskinfo
from flanrec.model.config import T5Config

log = logging.getLogger("flanrec.train")

METRIC_KEYS = ("hr", "ndcg", "mrr")


@dataclasses.dataclass(frozen=True)
class RankEvalConfig:
    """What to rank while training (gin: ``RANK_EVAL_TASK``, ``RANK_EVAL_KS``, ...)."""

    task: str = ""
    split: str = "validation"
    ks: tuple[int, ...] = (10, 20)
    batch_size: int = 128
    num_beams: int = 20
    task_feature_lengths: Mapping[str, int] | None = None  # default: the training lengths
    ranker: str = "auto"  # as flanrec.infer's RANKER: one forward pass where it applies


def host_params(params: Any) -> Any:
    """Parameters as arrays this host can feed to an unsharded jitted decode.

    Fully addressable arrays are used as they are; in a multi-process run the global
    arrays are gathered (every host holds the whole model for the decode, as
    ``flanrec.infer`` would after restoring).
    """
    leaves = jax.tree.leaves(params)
    if all(getattr(x, "is_fully_addressable", True) for x in leaves):
        return params
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(params, tiled=True)


class RankValidator:
    """Ranks one task split for the current parameters; returns ``{"hr@10": ..., ...}``."""

    def __init__(self, cfg: RankEvalConfig, config: T5Config,
                 default_lengths: Mapping[str, int]) -> None:
        lengths = dict(cfg.task_feature_lengths or default_lengths)
        self.cfg = cfg
        infos = job.resolve_tasks(cfg.task, cfg.split, "predict")
        if len(infos) != 1:
            raise taskinfo.InferenceConfigError(
                f"RANK_EVAL_TASK {cfg.task!r} must be one ranking task, not a mixture of "
                f"{len(infos)}")
        self.info = infos[0]
        self.opts = job.InferenceOptions(
            output_dir="-", task_feature_lengths=lengths, split=cfg.split,
            batch_size=cfg.batch_size, num_beams=max(cfg.num_beams, max(cfg.ks)),
            ranker=cfg.ranker)
        job.validate_options(self.opts)
        self.runner = job.TaskRunner(self.info, config, None, self.opts)
        host, hosts = jax.process_index(), jax.process_count()
        self.rows = list(job.task_examples(self.info.name, cfg.split, lengths, host, hosts))
        if not self.rows and hosts == 1:
            raise taskinfo.InferenceConfigError(f"{cfg.task}/{cfg.split}: no examples")
        self.num_users = len(self.rows)
        log.info("rank validation: %s/%s, %d users on this host, top-%d (%s)", self.info.name,
                 cfg.split, self.num_users, max(cfg.ks),
                 self.runner.ranking_path.replace("_", " "))

    def evaluate(self, params: Any) -> dict[str, float]:
        """HR/NDCG/MRR@K averaged over all users of the split (all hosts)."""
        t0 = time.time()
        self.runner.params = host_params(params)
        sums = np.zeros(len(self.cfg.ks) * len(METRIC_KEYS) + 1, np.float64)
        b = self.opts.batch_size
        for lo in range(0, len(self.rows), b):
            for rec in self.runner.run_batch(self.rows[lo: lo + b]):
                per_user = metrics_lib.user_ranking_metrics(rec["items"], [rec["target_item"]],
                                                            self.cfg.ks)
                sums[:-1] += [per_user[f"{m}@{k}"] for k in self.cfg.ks for m in METRIC_KEYS]
                sums[-1] += 1
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            sums = np.asarray(multihost_utils.process_allgather(sums)).sum(0)
        n = max(sums[-1], 1.0)
        names = [f"{m}@{k}" for k in self.cfg.ks for m in METRIC_KEYS]
        out = {name: float(v / n) for name, v in zip(names, sums[:-1], strict=True)}
        out["num_users"] = float(sums[-1])
        out["seconds"] = time.time() - t0
        return out
