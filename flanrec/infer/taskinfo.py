"""What inference needs to know about a SeqIO task beyond its examples.

A flanrec task is a directory of a prepared dataset (``DATA_DIR/tasks/<dir>/info.json``):
its family and target kind decide which modes make sense (ranking item IDs, scoring
"no"/"yes", rating), its item indexing decides which trie and ID strings to use, and the
split decides which items a user has already seen. This module finds all of that from a
task name, failing with the name of what is missing.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from flanrec.errors import UserError
from flanrec.files import storage

BINARY_ANSWERS = ("no", "yes")  # flanrec.data.examples.binary_examples writes these
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


def _prefix(data_dir: str) -> str | None:
    try:
        prefix = storage.read_json(storage.join(data_dir, "prepare.json")).get("task_prefix")
    except (FileNotFoundError, PermissionError, IsADirectoryError, json.JSONDecodeError,
            AttributeError):  # not a prepared dir; an unreachable file system still raises
        return None
    return prefix if isinstance(prefix, str) else None


def find_task_info(task_name: str, data_dirs: list[str]) -> TaskInfo | None:
    """The prepared task directory of `task_name` among `data_dirs`, else None."""
    for data_dir in data_dirs:
        prefix = _prefix(data_dir)
        if not prefix or not task_name.startswith(prefix + "_"):
            continue
        task_dir = storage.join(data_dir, "tasks", task_name[len(prefix) + 1:])
        path = storage.join(task_dir, "info.json")
        if storage.exists(path):
            info: dict[str, Any] = storage.read_json(path)
        else:  # a family registered from user code: its source carries the same record
            info = _registered_info(task_name, data_dir)
            if info is None:
                continue
        return TaskInfo(task_name, data_dir, task_dir, str(info.get("family", "")),
                        str(info.get("target_kind", "text")), info.get("index_method"),
                        tuple(sorted(info.get("features", {}))),
                        str(info.get("target_layout", "single")))
    return None


def _registered_info(task_name: str, data_dir: str) -> dict[str, Any] | None:
    """The info of a task `prepared_tasks.register_family_task` registered over `data_dir`."""
    import seqio

    if task_name not in seqio.TaskRegistry.names():
        return None
    source = seqio.get_mixture_or_task(task_name).source
    info = getattr(source, "info", None)
    if not isinstance(info, dict) or getattr(source, "data_dir", None) != data_dir:
        return None
    return info


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
        return f"{info.task_dir}/info.json names no index_method"
    return None
