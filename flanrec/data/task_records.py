"""The examples of one prepared task split as Python records (what the baselines answer).

Apart from `flanrec.data.prepared` (the files of a prepared dir) because reading a task's
examples needs its seqio source, which itself reads the prepared dir.
"""

from __future__ import annotations

import os
from typing import Any

from flanrec.data import layout, prepared


def read_task_split(data_dir: str, task_dir: str, split_name: str,
                    fields: tuple[str, ...] = ("user", "target_item", "candidates", "targets"),
                    ) -> list[dict[str, Any]]:
    """The records of one prepared task split as plain Python values, in split order.

    For baselines that must answer exactly the examples a model answers (the direct family's
    candidate lists, say). A task rendered on read is rendered here by its family, as seqio
    would; an older prepare's TFRecords are read back (examples were dealt round-robin over
    the shards, so reading them interleaved restores split order). Only the requested
    ``fields`` that the task has are kept.
    """
    import tensorflow as tf

    from flanrec.data import seqio_tasks, writer

    root = os.path.join(data_dir, layout.task_dir(task_dir))
    info = writer.read_info(root)
    if split_name not in info["splits"]:
        raise prepared.PreparedDataError(f"{root}: no split {split_name!r} (has "
                                f"{sorted(info['splits'])})")
    if "files" not in info["splits"][split_name]:  # rendered on read (flanrec.data.families)
        from flanrec.data.family_source import FamilySource

        counts = {s: v["num_input_examples"] for s, v in info["splits"].items()}
        source = FamilySource(data_dir, info["family"], info.get("index_method"), counts)
        keep = [k for k in fields if k in info["features"]]
        return [{k: ex.get(k) for k in keep} for ex in source.examples(split_name)]
    schema = {k: v for k, v in info["features"].items() if k in fields}
    spec = seqio_tasks.feature_description(schema)
    shards = [list(tf.data.TFRecordDataset(os.path.join(root, f)).map(
        lambda x: tf.io.parse_single_example(x, spec)).as_numpy_iterator())
        for f in info["splits"][split_name]["files"]]

    def plain(v: Any) -> Any:
        if isinstance(v, bytes):
            return v.decode("utf-8")
        if hasattr(v, "tolist"):
            v = v.tolist()
        if isinstance(v, list):
            return [plain(x) for x in v]
        return plain(v) if isinstance(v, bytes) else v

    out = []
    for j in range(max(len(s) for s in shards)):
        for s in shards:
            if j < len(s):
                out.append({k: plain(v) for k, v in s[j].items()})
    return out
