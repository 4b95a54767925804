"""What every baseline shares: the evaluation queries and writing the JSONL predict format."""

from __future__ import annotations

from collections.abc import Sequence

from flanrec.data import splits, types
from flanrec.files import outputs, storage
from flanrec.files.predictions import shard_name, shard_prefix, write_shard

STAGES = ("validation", "test")


def queries(split: types.Split, stage: str) -> list[splits.EvalExample]:
    """The protocol's validation or test queries (history window, target, seen items)."""
    if stage not in STAGES:
        raise ValueError(f"split must be one of {STAGES}, got {stage!r}")
    return splits.eval_examples(split, stage)


def prediction_rows(task: str, stage: str, examples: Sequence[splits.EvalExample],
                    ranked: Sequence[Sequence[str]], scores: Sequence[Sequence[float]],
                    ) -> list[dict]:
    """JSONL `predict` records (the contract flanrec.infer writes) for baseline outputs.

    ``inputs`` holds the history window as space-separated raw ids (there is no prompt);
    ``ids`` equal ``items`` (a baseline has no ID strings); nothing invalid or duplicated.
    """
    rows = []
    for index, (ex, items, sc) in enumerate(zip(examples, ranked, scores, strict=True)):
        rows.append({
            "task": task, "split": stage, "mode": "predict", "index": index,
            "user": ex.user, "inputs": " ".join(ex.history), "targets": ex.target,
            "target_item": ex.target, "template_idx": -1, "template_type": "",
            "items": list(items), "ids": list(items), "scores": [float(s) for s in sc],
            "invalid": 0, "duplicates": 0,
        })
    return rows


@outputs.releases_locks
def write_predictions(out_dir: str, task: str, rows: Sequence[dict], mode: str = "predict"
                      ) -> str:
    """Write one shard atomically (temp name, then rename); returns its path.

    Older shards of the same task with another shard count are removed first, so the
    evaluator never mixes two runs.
    """
    out_dir = outputs.claim_dir(out_dir, "baselines", what="--out")
    path = storage.join(out_dir, shard_name(task, mode))
    for name in storage.listdir(out_dir):
        if name.startswith(shard_prefix(task, mode)) and name != storage.basename(path):
            storage.remove(storage.join(out_dir, name))
    write_shard(path, rows)
    return path
