"""Will TASK_FEATURE_LENGTHS cut the data? Measure token lengths on a sample, before training.

SeqIO trims every feature to its TASK_FEATURE_LENGTHS entry without a word, so a targets
length one token too short removes the EOS (or the last ID token) of every item the model is
taught, and an inputs length too short drops the oldest history: the run trains and reports
numbers, but on data other than the user meant. This module tokenizes the first examples of
each task of a mixture with no trimming (the EOS the features append included) and tells,
per task and feature, how many would be cut and the 99th-percentile length to set instead.

A sample of the first examples (not a random one) keeps this to a second or two per task:
reading the first records of a file needs no shuffle buffer. Tune or switch it off in gin:
`length_check_settings.sample = 0`, `length_check_settings.max_cut = {'targets': 0.01, ...}`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import gin
import numpy as np

from flanrec.errors import UserError

DEFAULT_SAMPLE = 2000
# Share of examples a feature may lose tokens in before the run is refused: targets carry
# the answer (an item ID without its EOS is another token sequence), inputs mostly the
# oldest history items, which matter less.
MAX_CUT = {"targets": 0.005, "inputs": 0.05}
_NO_LIMIT = 1 << 20


@dataclasses.dataclass(frozen=True)
class FeatureReport:
    """One (task, feature): how many sampled examples exceed `length`, and the p99."""

    task: str
    feature: str
    length: int
    sampled: int
    cut: int
    p99: int
    longest: int
    weight: float = 1.0  # the task's share of the mixture (1 for a single task)

    @property
    def fraction(self) -> float:
        return self.cut / self.sampled if self.sampled else 0.0


def _leaf_tasks(name: str) -> list[tuple[object, float]]:
    """(task, mixing rate) of every leaf task: a task's cuts count by how often the mixture
    samples it, so 5% of a 1%-task's long titles are 0.05% of the training targets."""
    import seqio

    provider = seqio.get_mixture_or_task(name)
    if not isinstance(provider, seqio.Mixture):
        return [(provider, 1.0)]
    absl = logging.getLogger("absl")  # seqio warns per task that the rate is by input count
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        return [(t, float(provider.get_rate(t))) for t in provider.tasks]
    finally:
        absl.setLevel(level)


def measure(task_name: str, lengths: Mapping[str, int], split: str = "train",
            sample: int = DEFAULT_SAMPLE) -> list[FeatureReport]:
    """Token lengths (EOS included, untrimmed) of the first examples of each leaf task of
    `task_name` that has `split`; `sample` examples in all, at least 50 per task. A task
    that cannot be read this way is logged and left out (training reads it differently)."""
    tasks = [(t, r) for t, r in _leaf_tasks(task_name) if split in t.splits]
    total = sum(r for _, r in tasks)
    if not tasks or total <= 0:
        return []
    per_task = max(50, math.ceil(sample / len(tasks)))
    out = []
    for task, rate in tasks:
        features = [f for f in ("inputs", "targets") if f in lengths and f in
                    task.output_features]
        seen: dict[str, list[int]] = {f: [] for f in features}
        try:
            ds = task.get_dataset({f: _NO_LIMIT for f in task.output_features}, split=split,
                                  shuffle=False, num_epochs=1, use_cached=False, seed=None,
                                  try_in_mem_cache=False)  # a sample: never a half-read cache
            for ex in ds.take(per_task).as_numpy_iterator():
                for f in features:
                    seen[f].append(int(np.asarray(ex[f]).shape[0]))
        except Exception as e:  # noqa: BLE001 - a check must not be what breaks the run
            logging.getLogger(__name__).warning(
                "TASK_FEATURE_LENGTHS: could not sample %s/%s to check lengths (%s: %s)",
                task.name, split, type(e).__name__, str(e).splitlines()[0] if str(e) else "")
            continue
        for f in features:
            lens = np.asarray(seen[f], np.int64)
            if not lens.size:
                continue
            limit = int(lengths[f])
            out.append(FeatureReport(task.name, f, limit, int(lens.size),
                                     int((lens > limit).sum()),
                                     int(np.ceil(np.percentile(lens, 99))), int(lens.max()),
                                     rate / total))
    return out


@gin.configurable
def length_check_settings(sample: int = DEFAULT_SAMPLE,
                          max_cut: Mapping[str, float] = MAX_CUT
                          ) -> tuple[int, Mapping[str, float]]:
    """What `check_feature_lengths` uses when not told: gin `length_check_settings.sample`
    (0 switches the check off) and `.max_cut` (share of examples per feature)."""
    return sample, max_cut


def check_feature_lengths(task_name: str, lengths: Mapping[str, int], split: str = "train",
                          sample: int | None = None,
                          max_cut: Mapping[str, float] | None = None,
                          warn: Callable[..., Any] | None = None) -> list[FeatureReport]:
    """Refuse (UserError) when more than `max_cut` of the training examples (the sampled
    share of each task, weighted by its mixing rate) would be truncated in a feature; the
    message names the feature, the share, the task that loses most and its p99 length.

    Smaller losses are passed to `warn` (a `logging.Logger.warning`-like callable) so they
    are visible without stopping the run. Returns the per-(task, feature) reports.
    """
    default_sample, default_cut = length_check_settings()
    sample = default_sample if sample is None else sample
    max_cut = default_cut if max_cut is None else max_cut
    if sample <= 0:  # `length_check_settings.sample = 0` in gin: the check is off
        return []
    reports = measure(task_name, lengths, split, sample)
    for feature in sorted({r.feature for r in reports}):
        rows = [r for r in reports if r.feature == feature]
        share = sum(r.weight * r.fraction for r in rows)
        limit = max_cut.get(feature, 0.0)
        if share <= limit:
            continue
        worst = max(rows, key=lambda x: x.weight * x.fraction)
        where = f" of {task_name}" if len(rows) == 1 else (
            f" of the mixture {task_name}; most in {worst.task}: {worst.cut} of its first "
            f"{worst.sampled}")
        raise UserError(
            f"TASK_FEATURE_LENGTHS[{feature!r}] = {worst.length} would truncate "
            f"{100 * share:.1f}% of the {split} examples{where} (sampled "
            f"{sum(r.sampled for r in rows)}; {feature} p99 {worst.p99} tokens, longest "
            f"{worst.longest}, EOS included). Set TASK_FEATURE_LENGTHS['{feature}'] to at "
            f"least {worst.p99}; more than {100 * limit:g}% cut is refused")
    if warn is not None:
        for r in reports:
            if r.cut:
                warn("TASK_FEATURE_LENGTHS[%r] = %d truncates %d of the first %d %s examples "
                     "of %s (p99 %d tokens)", r.feature, r.length, r.cut, r.sampled, split,
                     r.task, r.p99)
    return reports


__all__ = ["DEFAULT_SAMPLE", "MAX_CUT", "FeatureReport", "check_feature_lengths", "measure"]
