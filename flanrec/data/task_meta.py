"""What a registered flanrec task is, read from its seqio registration.

A flanrec task's source (`flanrec.data.family_source.FamilySource`) carries the prepared dir
it reads, its family, its item indexing and its record (counts, features, target kind and
layout). So inference, rank validation, eval and the baselines ask `task_meta(name)` and get
all of it from the one registration the task was trained from: nothing re-reads environment
variables, strips a prefix from the task name or searches directories for it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from flanrec.data import layout
from flanrec.data.families import Family
from flanrec.errors import UserError
from flanrec.files import storage

# seqio and FamilySource (TensorFlow) are imported inside the functions: the jobs import
# this module through the inference job, and their front end must set TF's environment
# before TF loads (tests/test_jobs_cli.py checks that no job imports it at import time).


class NotAFlanrecTaskError(UserError, ValueError):
    """The name is not registered, or its task does not read a prepared dir."""


@dataclasses.dataclass(frozen=True)
class TaskMeta:
    """One registered task over a prepared dir: where its data is and what its family says."""

    name: str
    data_dir: str
    family: Family
    index_method: str | None
    task_dir: str  # the task's directory name under tasks/ (its name without the prefix)
    info: Mapping[str, Any]  # the task's record: what prepare wrote to its info.json

    @property
    def target_kind(self) -> str:
        return self.family.target_kind

    @property
    def target_layout(self) -> str:
        return self.family.target_layout

    @property
    def features(self) -> tuple[str, ...]:
        """Names of the features its examples carry, sorted."""
        return tuple(sorted(self.info.get("features") or {}))

    @property
    def counts(self) -> dict[str, int]:
        """Examples per split."""
        return {s: int(v["num_input_examples"])
                for s, v in (self.info.get("splits") or {}).items()}

    @property
    def task_path(self) -> str:
        """``DATA_DIR/tasks/<task_dir>`` (where prepare writes the task's info.json)."""
        return storage.join(self.data_dir, layout.task_dir(self.task_dir))

    @property
    def index_file(self) -> str | None:
        """The item index of its indexing, as a path, or None for a family without one."""
        return (storage.join(self.data_dir, layout.index_file(self.index_method))
                if self.index_method else None)


def task_meta(task: Any) -> TaskMeta:
    """The `TaskMeta` of a registered task (a name or the `seqio.Task` itself).

    Raises `NotAFlanrecTaskError` naming the task when it is not registered or does not
    read a prepared dir (a TFRecord task, a mixture)."""
    import seqio

    from flanrec.data.family_source import FamilySource

    if isinstance(task, str):
        if task not in seqio.TaskRegistry.names():
            raise NotAFlanrecTaskError(f"{task}: no seqio task of that name is registered")
        task = seqio.get_mixture_or_task(task)
    source = getattr(task, "source", None)
    if not isinstance(source, FamilySource):
        raise NotAFlanrecTaskError(
            f"{task.name}: not a task over a prepared dir (its source is "
            f"{type(source).__name__}, not a FamilySource)")
    return TaskMeta(name=task.name, data_dir=source.data_dir, family=source.family_spec,
                    index_method=source.index_method, task_dir=source.task_dir,
                    info=source.info)


def registered_data_dirs() -> list[str]:
    """The prepared dirs the registered tasks read, in registration order."""
    import seqio

    from flanrec.data.family_source import FamilySource

    dirs = []
    for name in seqio.TaskRegistry.names():
        source = getattr(seqio.TaskRegistry.get(name), "source", None)
        if isinstance(source, FamilySource):
            dirs.append(source.data_dir)
    return list(dict.fromkeys(dirs))
