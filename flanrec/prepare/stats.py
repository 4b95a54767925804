"""`python -m flanrec.prepare --add_stats DIR`: measure a prepared dir's ``stats`` again.

A run derives its shape settings ('auto' lengths, vocabulary size, packing, an epoch
budget: `flanrec.data.derived`) from prepare.json's ``stats``, which prepare measures while
it writes the dir. A dir written before prepare recorded them (or before it recorded means
and the train length pairs packing is estimated from) need not be prepared again from the
raw log: its tasks render from what the dir stores, so the same measurement
(`flanrec.data.data_stats`) runs on them here, in seconds, and replaces ``stats``; nothing
else in the dir changes. prepare owns prepare.json, and the file is replaced atomically, so
a job reading it meanwhile sees the old document or the new one, never half of one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flanrec.data import data_stats as stats_lib
from flanrec.data import families as families_lib
from flanrec.data import layout, prepared, writer
from flanrec.data import vocab as vocab_lib
from flanrec.data.family_source import load_family_data
from flanrec.files import storage


def measure(data_dir: str) -> dict[str, Any]:
    """prepare.json's ``stats`` for the prepared dir `data_dir`, measured from its split,
    vocabulary and tasks as prepare measures them (without the vocabulary's text sample,
    a large train split is sampled by stride instead)."""
    doc = prepared.read_prepare_json(data_dir)
    split = prepared.load_split(data_dir)
    out: dict[str, Any] = {"catalogue": len(split.all_items), "users": len(split.users),
                           "history": stats_lib.history_stats(split), "vocab": None,
                           "tasks": {}}
    try:
        vocabulary = vocab_lib.vocabulary_for_prepared(data_dir)
    except vocab_lib.VocabularyNotFoundError as e:
        out["tokens_skipped_because"] = str(e).splitlines()[0]
        return out
    out["vocab"] = stats_lib.vocab_stats(vocabulary)
    for name in (doc.get("counts") or {}).get("tasks") or {}:
        info = writer.read_info(storage.join(data_dir, layout.task_dir(name)))
        family = families_lib.get(info["family"])
        data = load_family_data(data_dir, info.get("index_method"))
        counts = {s: int(v["num_input_examples"]) for s, v in info["splits"].items()}
        out["tasks"][name] = stats_lib.task_token_stats(
            family, data, vocabulary, counts, bool(info.get("targets_eos", True)))
    return out


def add_stats(data_dir: str, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure `data_dir`'s stats and write them into its prepare.json (atomically);
    returns them."""
    stats = measure(data_dir)
    path = storage.join(data_dir, layout.PREPARE_FILE)
    doc = prepared.read_prepare_json(data_dir)  # read again: the newest document wins
    had = "replaced" if "stats" in doc else "added"
    doc["stats"] = stats
    storage.write_json_atomic(path, doc, ensure_ascii=True)
    tasks = ", ".join(stats["tasks"]) or "none"
    log(f"{path}: stats {had} (vocabulary {(stats.get('vocab') or {}).get('size')} ids; "
        f"token lengths of {tasks})")
    return stats


__all__ = ["add_stats", "measure"]
