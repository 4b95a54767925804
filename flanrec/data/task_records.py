"""The examples of one prepared task split as Python records (what the baselines answer).

Apart from `flanrec.data.prepared` (the files of a prepared dir) because reading a task's
examples needs its seqio source, which itself reads the prepared dir.
"""

from __future__ import annotations

import os
from typing import Any

from flanrec.data import layout, prepared, writer


def read_task_split(data_dir: str, task_dir: str, split_name: str,
                    fields: tuple[str, ...] = ("user", "target_item", "candidates", "targets"),
                    ) -> list[dict[str, Any]]:
    """The records of one prepared task split as plain Python values, in split order.

    For baselines that must answer exactly the examples a model answers (the candidate
    lists a family shows, say): the task's family renders them here as seqio would. Only
    the requested ``fields`` that the task has are kept.
    """
    root = os.path.join(data_dir, layout.task_dir(task_dir))
    info = writer.read_info(root)
    if split_name not in info["splits"]:
        raise prepared.PreparedDataError(f"{root}: no split {split_name!r} (has "
                                         f"{sorted(info['splits'])})")
    from flanrec.data import prepared_tasks  # TF, which the jobs load after their front end

    source = prepared_tasks.prepared_source(data_dir, task_dir, info)
    keep = [k for k in fields if k in info["features"]]
    return [{k: ex.get(k) for k in keep} for ex in source.examples(split_name)]
