"""What inference needs to know about a SeqIO task beyond its examples.

A flanrec task reads a prepared dataset: its family and target kind decide which modes make
sense (ranking item IDs, scoring "no"/"yes", rating), its item indexing decides which trie
and ID strings to use, and the split decides which items a user has already seen. All of
it comes from the task's registration (`flanrec.data.task_meta`).
"""

from __future__ import annotations

import dataclasses

from flanrec.data.task_meta import NotAFlanrecTaskError, task_meta
from flanrec.errors import UserError

BINARY_ANSWERS = ("no", "yes")  # the binary family (flanrec.data.families.binary) writes these
RATING_ANSWERS = ("1", "2", "3", "4", "5")  # examples.format_rating of ML ratings


class InferenceConfigError(UserError, ValueError):
    """A setting of the inference job is wrong (mode, task, split, checkpoint, ...)."""


@dataclasses.dataclass(frozen=True)
class TaskInfo:
    """One prepared task: name, directory, family, target kind, item indexing."""

    name: str
    data_dir: str
    task_dir: str
    family: str
    target_kind: str
    index_method: str | None
    features: tuple[str, ...]
    # "single": targets are one answer + EOS; "item_sequence" (seqrec): item IDs without
    # EOS, the last one being the item to predict after feeding the others to the decoder.
    target_layout: str = "single"

    @property
    def has_candidates(self) -> bool:
        return "candidates" in self.features

    @property
    def is_item_sequence(self) -> bool:
        return self.target_layout == "item_sequence"


def stage_of(split: str) -> str | None:
    """Which items count as seen for `split`: "validation" (train items), "test" (train +
    validation items, also for "test_unseen") or None (train: nothing is masked)."""
    if split.startswith("validation"):
        return "validation"
    if split.startswith("test"):
        return "test"
    return None


def find_task_info(task_name: str) -> TaskInfo | None:
    """What inference needs of the registered task `task_name`, else None (not registered,
    or not a task over a prepared dir): read from its registration (`task_meta`)."""
    try:
        meta = task_meta(task_name)
    except NotAFlanrecTaskError:
        return None
    return TaskInfo(meta.name, meta.data_dir, meta.task_path, meta.family.name,
                    meta.target_kind, meta.index_method, meta.features, meta.target_layout)


def check_mode(info: TaskInfo, mode: str) -> str | None:
    """None if `mode` applies to the task, else the reason it does not."""
    if mode == "predict" and info.target_kind != "item":
        return f"predict decodes item IDs, but {info.name}'s targets are {info.target_kind}"
    if mode == "rating" and info.target_kind != "rating":
        return f"rating mode needs a rating task, {info.name}'s targets are {info.target_kind}"
    if mode == "score" and info.target_kind not in ("item", "binary", "rating"):
        return (f"score mode ranks items or closed answers, {info.name}'s targets are "
                f"{info.target_kind}")
    if mode != "predict" and info.is_item_sequence:
        return (f"{info.name} is a seqrec task (targets: a run of item IDs the decoder reads "
                "causally); rank it with MODE='predict'")
    if info.target_kind == "item" and not info.index_method:
        return f"{info.task_dir}: the task names no index_method"
    return None
