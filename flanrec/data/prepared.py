"""Read back what ``flanrec.prepare`` wrote: the split, the item index and the trie.

The inference job, the evaluation job and the baselines all rank against the same split and
mask the same seen items; reading the prepared directory (not re-deriving the split from raw
files) guarantees that, and checks the fingerprint ``prepare`` recorded so a hand-edited or
half-copied directory fails loudly instead of producing quietly different metrics.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from flanrec import storage
from flanrec.data.types import ItemMeta, Split, UserSequence
from flanrec.errors import UserError

SPLIT_FILE = os.path.join("split", "split.json")
PREPARE_FILE = "prepare.json"


class PreparedDataError(UserError, ValueError):
    """A prepared directory is missing a file or does not match what prepare recorded."""


def read_prepare_json(data_dir: str) -> dict[str, Any]:
    """``DATA_DIR/prepare.json`` (options, fingerprints, task list) as a dict."""
    path = storage.join(data_dir, PREPARE_FILE)
    if not storage.exists(path):
        raise PreparedDataError(
            f"{path}: not found; is {data_dir!r} a directory written by "
            "`python -m flanrec.prepare --out ...`?")
    storage.require_complete(data_dir, "prepared data dir")
    return json.loads(storage.read_text(path))


def load_split(data_dir: str) -> Split:
    """The leave-one-out split ``prepare`` used, users in the order it wrote them.

    The file's sha256 is compared with the one in ``prepare.json`` when recorded.
    """
    path = storage.join(data_dir, SPLIT_FILE)
    if not storage.exists(path):
        raise PreparedDataError(f"{path}: not found (prepared data dir expected)")
    storage.require_complete(data_dir, "prepared data dir")
    text = storage.read_text(path)
    expected = _recorded_sha(data_dir, "split.json")
    if expected and hashlib.sha256(text.encode("utf-8")).hexdigest() != expected:
        raise PreparedDataError(
            f"{path}: sha256 differs from the one recorded in {PREPARE_FILE}; the split was "
            "changed after prepare wrote it: run prepare again")
    doc = json.loads(text)
    try:
        users = [UserSequence(**u) for u in doc["users"]]
        return Split(users=users, all_items=list(doc["all_items"]),
                     max_history=int(doc.get("max_history", 50)))
    except (KeyError, TypeError) as e:
        raise PreparedDataError(f"{path}: malformed split ({e})") from e


def _recorded_sha(data_dir: str, name: str) -> str | None:
    try:
        info = read_prepare_json(data_dir)
    except PreparedDataError:
        return None
    for key in ("files",):
        value = info.get(key)
        if isinstance(value, dict) and name in value:
            return str(value[name])
    return None


def load_meta(data_dir: str) -> ItemMeta:
    """Item titles, years and categories from ``split/items.tsv`` (templates need them)."""
    path = storage.join(data_dir, "split", "items.tsv")
    if not storage.exists(path):
        raise PreparedDataError(f"{path}: not found (prepared data dir expected)")
    meta = ItemMeta(title={})
    with storage.open(path) as f:
        header = f.readline().rstrip("\n").split("\t")
        if header[:4] != ["item", "title", "year", "categories"]:
            raise PreparedDataError(f"{path}:1: expected header item/title/year/categories, "
                                    f"got {header}")
        for n, line in enumerate(f, start=2):
            cols = line.rstrip("\n").split("\t")
            if len(cols) != 4:
                raise PreparedDataError(f"{path}:{n}: expected 4 tab-separated fields, got "
                                        f"{len(cols)}")
            item, title, year, cats = cols
            if title:
                meta.title[item] = title
            if year:
                meta.year[item] = year
            if cats:
                meta.categories[item] = [c.strip() for c in cats.split("|") if c.strip()]
    return meta


def read_task_split(data_dir: str, task_dir: str, split_name: str,
                    fields: tuple[str, ...] = ("user", "target_item", "candidates", "targets"),
                    ) -> list[dict[str, Any]]:
    """The records of one prepared task split as plain Python values, in file order.

    For baselines that must answer exactly the examples a model answers (the direct family's
    candidate lists, say) without re-rendering them. Examples are dealt round-robin over the
    shards (`flanrec.data.writer`), so reading the shards interleaved restores split order.
    Only the requested ``fields`` that the task has are decoded.
    """
    import tensorflow as tf

    from flanrec.data import seqio_tasks, writer

    root = os.path.join(data_dir, "tasks", task_dir)
    info = writer.read_info(root)
    if split_name not in info["splits"]:
        raise PreparedDataError(f"{root}: no split {split_name!r} (has "
                                f"{sorted(info['splits'])})")
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
