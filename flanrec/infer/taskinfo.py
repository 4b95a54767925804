"""What inference needs to know about a SeqIO task beyond its examples.

A flanrec task reads a prepared dataset: its family and target kind decide which modes make
sense (ranking item IDs, scoring "no"/"yes", rating, decoding text), its item indexing
decides which trie and ID strings to use, and the split decides which items a user has
already seen. All of it comes from the task's registration (`flanrec.data.task_meta`).

Any other registered seqio task (a JSON-lines task of `register_jsonl_task`, a TFRecord
task) has no prepared dir: it is a text task, which the free-decoding mode (`decode`, T5X's
predict) runs as T5X's infer would.
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
    # Whether the answer is the user's held-out item of the split (the protocol's queries);
    # False: seen items are not masked, since the answer may be one of them.
    held_out_target: bool = True

    @property
    def has_candidates(self) -> bool:
        return "candidates" in self.features

    @property
    def is_item_sequence(self) -> bool:
        return self.target_layout == "item_sequence"

    @property
    def has_prepared_dir(self) -> bool:
        return bool(self.data_dir)


DECODE = "decode"
"""Free decoding over the whole vocabulary (greedy with NUM_BEAMS=1, else beam search), the
decoded text written as the prediction: T5X's infer `predict` mode, for any task."""


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
                    meta.target_kind, meta.index_method, meta.features, meta.target_layout,
                    meta.family.held_out_target)


def plain_task_info(task_name: str) -> TaskInfo:
    """A registered seqio task that reads no prepared dir (a JSON-lines or TFRecord task):
    text targets, no users, items or split; only `decode` applies to it."""
    return TaskInfo(task_name, "", "", "", "text", None, ("inputs", "targets"))


def resolve_mode(info: TaskInfo, mode: str) -> str:
    """The mode a task runs in: MODE as given, except that `predict` on a task whose
    targets are text means free decoding (there is no catalogue to constrain it to), as
    T5X's predict does for any task. Item tasks keep trie-constrained ranking."""
    if mode == "predict" and info.target_kind == "text":
        return DECODE
    return mode


def check_mode(info: TaskInfo, mode: str) -> str | None:
    """None if `mode` applies to the task, else the reason it does not (`mode` after
    `resolve_mode`)."""
    if mode == DECODE:
        if info.is_item_sequence:
            return (f"{info.name} is a seqrec task (targets: a run of item IDs the decoder "
                    "reads causally); rank it with MODE='predict'")
        return None
    if not info.has_prepared_dir:
        return (f"{info.name} reads no prepared dir (its targets are text): it runs with "
                f"MODE='{DECODE}' (free decoding), or MODE='predict', which means the same "
                "for a text task")
    if mode == "predict" and info.target_kind != "item":
        return (f"predict decodes item IDs, but {info.name}'s targets are "
                f"{info.target_kind}; MODE='{DECODE}' decodes them as free text"
                + ("" if info.target_kind == "text" else
                   f" (MODE='{'rating' if info.target_kind == 'rating' else 'score'}' "
                   "scores the closed answers)"))
    if mode == "rating" and info.target_kind != "rating":
        return f"rating mode needs a rating task, {info.name}'s targets are {info.target_kind}"
    if mode == "score" and info.target_kind not in ("item", "binary", "rating"):
        return (f"score mode ranks items or closed answers, {info.name}'s targets are "
                f"{info.target_kind}; MODE='{DECODE}' (or 'predict') decodes them as free "
                "text")
    if mode != "predict" and info.is_item_sequence:
        return (f"{info.name} is a seqrec task (targets: a run of item IDs the decoder reads "
                "causally); rank it with MODE='predict'")
    if info.target_kind == "item" and not info.index_method:
        return f"{info.task_dir}: the task names no index_method"
    return None
