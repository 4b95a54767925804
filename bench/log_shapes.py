"""Interaction logs of shapes ML-100K is not, for running the quickstart untouched on them.

    python bench/log_shapes.py --shape long_ids --out /tmp/long.csv
    python bench/log_shapes.py --shape unicode --out /tmp/uni.csv
    python bench/log_shapes.py --shape large --out /tmp/large.txt --format sequences
    python -m flanrec.quickstart --dataset csv --data_dir /tmp/p --model_dir /tmp/r \
        --prepare_args "--raw_dir /tmp/long.csv --train_vocab --task_prefix mine"

Why: a setting tuned to one log (ML-100K's task name, 56 input tokens, 4,224 embedding
rows, 3,000 steps) fails as soon as ids are longer strings, the catalogue is larger or
sequences are shorter. The shapes:

- ``long_ids``: ids such as ``viewer_000123456`` and ``sku-0007f3a2-item`` (more input
  tokens per user and item);
- ``unicode``: ids in several scripts (``usuário_ñ12``, ``商品★0042``);
- ``large``: a 50,000-item catalogue, 100,000 users, median sequence length 5 (the Amazon
  5-core shape, scaled up);
- ``small``: a few hundred users and items, for tests.

Sequences have structure a model can learn: each user has a taste cluster of items and walks
from one item to a near neighbour in that cluster, with popular items mixed in. Output is a
CSV (``user_id,item_id,timestamp``), a Parquet file, or one line per user
(``user item_1 ... item_n``, the `--dataset sequences` format); deterministic per seed.
"""

from __future__ import annotations

import argparse
import csv
import os
from collections.abc import Iterator

import numpy as np

SHAPES = {
    # users, items, median sequence length
    "small": (300, 400, 8),
    "long_ids": (3_000, 2_000, 8),
    "unicode": (3_000, 2_000, 8),
    "large": (100_000, 50_000, 5),
}
_SCRIPTS = ("usuário_ñ", "ユーザー", "пользователь", "用户★", "χρήστης", "😀user")
_ITEM_SCRIPTS = ("商品★", "artículo_é", "товар", "προϊόν", "🎬film")


def user_id(shape: str, u: int) -> str:
    if shape == "long_ids":
        return f"viewer_{u:09d}"
    if shape == "unicode":
        return f"{_SCRIPTS[u % len(_SCRIPTS)]}{u}"
    return f"u{u}"


def item_id(shape: str, i: int) -> str:
    if shape == "long_ids":
        return f"sku-{(i * 2654435761) % (1 << 32):08x}-item"
    if shape == "unicode":
        return f"{_ITEM_SCRIPTS[i % len(_ITEM_SCRIPTS)]}{i:04d}"
    return f"i{i}"


def sequences(users: int, items: int, median_len: int, seed: int = 0
              ) -> Iterator[list[int]]:
    """Each user's item numbers in time order: at least 3 (leave-one-out needs a train item,
    a validation and a test item), lengths log-normal with the given median, distinct items
    per user."""
    rng = np.random.default_rng(seed)
    clusters = max(1, items // 50)
    lengths = np.maximum(3, np.round(median_len * rng.lognormal(0.0, 0.6, users))
                         ).astype(int)
    lengths = np.minimum(lengths, min(items, 200))
    popular = rng.permutation(items)[: max(1, items // 100)]
    for n in lengths.tolist():
        cluster = int(rng.integers(clusters))
        lo = cluster * items // clusters
        size = max(1, (cluster + 1) * items // clusters - lo)
        pos = int(rng.integers(size))
        seq: list[int] = []
        seen: set[int] = set()
        while len(seq) < n:
            if rng.random() < 0.15:
                item = int(popular[rng.integers(len(popular))])
            else:
                pos = (pos + int(rng.integers(1, 4))) % size
                item = lo + pos
            if item in seen:
                item = int(rng.integers(items))
                if item in seen:
                    continue
            seen.add(item)
            seq.append(item)
        yield seq


def write(shape: str, out: str, fmt: str = "csv", users: int | None = None,
          items: int | None = None, median_len: int | None = None, seed: int = 0) -> int:
    """Write the log; returns the number of interactions."""
    du, di, dm = SHAPES[shape]
    users, items, median_len = users or du, items or di, median_len or dm
    rows = 0
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    seqs = sequences(users, items, median_len, seed)
    if fmt == "sequences":
        with open(out, "w", encoding="utf-8") as f:
            for u, seq in enumerate(seqs):
                f.write(" ".join([user_id(shape, u), *(item_id(shape, i) for i in seq)]) + "\n")
                rows += len(seq)
        return rows
    table: dict[str, list] = {"user_id": [], "item_id": [], "timestamp": []}
    for u, seq in enumerate(seqs):
        start = 1_600_000_000 + 1000 * u
        for t, i in enumerate(seq):
            table["user_id"].append(user_id(shape, u))
            table["item_id"].append(item_id(shape, i))
            table["timestamp"].append(start + 60 * t)
    rows = len(table["user_id"])
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table(table), out)
        return rows
    with open(out, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(list(table))
        w.writerows(zip(*table.values(), strict=True))
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--format", choices=("csv", "parquet", "sequences"), default="csv")
    ap.add_argument("--users", type=int, default=None)
    ap.add_argument("--items", type=int, default=None)
    ap.add_argument("--median_len", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    n = write(args.shape, args.out, args.format, args.users, args.items, args.median_len,
              args.seed)
    print(f"{args.out}: {n:,} interactions ({args.shape}, {args.format})")


if __name__ == "__main__":
    main()
