"""A synthetic interaction log shaped like MovieLens-1M, for timing `flanrec.prepare` at scale.

    python bench/synthetic_log.py --out /tmp/synth1m.csv                       # ~1.0M rows
    python bench/synthetic_log.py --out /tmp/synth100k.csv --interactions 100465 \
        --users 943 --items 1682                                               # ml-100k-sized
    python -m flanrec.prepare --dataset /tmp/synth1m.csv --raw_dir /tmp --out /tmp/p1m

Why synthetic: the point is how prepare's time and bytes grow with the number of interactions,
which needs a log ten times ml-100k that any machine can make offline. Users get a
log-normal number of interactions (at least 20, as in MovieLens), items a Zipf-like
popularity (exponent 1.0 over ranks), ratings 1-5 and increasing timestamps per user. The
output is a plain CSV (`user_id,item_id,rating,timestamp`), deterministic for a given seed.
"""

from __future__ import annotations

import argparse
import os

import numpy as np


def interaction_counts(users: int, total: int, rng: np.random.Generator,
                       minimum: int = 20) -> np.ndarray:
    """Per-user lengths >= `minimum` summing to exactly `total` (log-normal shape)."""
    if total < users * minimum:
        raise ValueError(f"{total} interactions cannot give {users} users {minimum} each")
    raw = rng.lognormal(mean=0.0, sigma=1.0, size=users)
    extra = raw / raw.sum() * (total - users * minimum)
    counts = minimum + np.floor(extra).astype(np.int64)
    short = total - int(counts.sum())
    counts[np.argsort(-extra + np.floor(extra))[:short]] += 1  # largest remainders
    return counts


def generate(users: int, items: int, total: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Columns of the log; each user's items are distinct (a user rates a movie once)."""
    rng = np.random.default_rng(seed)
    counts = interaction_counts(users, total, rng)
    if counts.max() > items:
        raise ValueError(f"a user would need {counts.max()} distinct items of {items}")
    popularity = 1.0 / np.arange(1, items + 1)
    popularity /= popularity.sum()
    item_of_rank = rng.permutation(items) + 1
    user_col, item_col = [], []
    for u, n in enumerate(counts.tolist(), start=1):
        # Gumbel top-k: n distinct items drawn with probability proportional to popularity.
        keys = np.log(popularity) + rng.gumbel(size=items)
        chosen = np.argpartition(-keys, n - 1)[:n]
        rng.shuffle(chosen)
        user_col.append(np.full(n, u, dtype=np.int64))
        item_col.append(item_of_rank[chosen])
    user = np.concatenate(user_col)
    item = np.concatenate(item_col)
    rating = rng.choice(np.arange(1, 6), size=total, p=[0.06, 0.11, 0.26, 0.35, 0.22])
    start = rng.integers(956_703_932, 1_046_454_590, size=users)
    steps = rng.integers(1, 3_600, size=total)
    ts = np.empty(total, dtype=np.int64)
    pos = 0
    for u, n in enumerate(counts.tolist()):
        ts[pos:pos + n] = start[u] + np.cumsum(steps[pos:pos + n])
        pos += n
    return {"user_id": user, "item_id": item, "rating": rating, "timestamp": ts}


def write_csv(path: str, cols: dict[str, np.ndarray]) -> None:
    """Written to a temporary name and renamed: a half-written log is never left behind."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(",".join(cols) + "\n")
        rows = np.stack(list(cols.values()), axis=1)
        np.savetxt(f, rows, fmt="%d", delimiter=",")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="CSV path to write")
    ap.add_argument("--users", type=int, default=6040)
    ap.add_argument("--items", type=int, default=3706)
    ap.add_argument("--interactions", type=int, default=1_003_010)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    cols = generate(args.users, args.items, args.interactions, args.seed)
    write_csv(args.out, cols)
    print(f"{args.out}: {len(cols['user_id']):,} interactions, {args.users:,} users, "
          f"{len(np.unique(cols['item_id'])):,} items")


if __name__ == "__main__":
    main()
