"""Generated logs whose best possible ranking is known, and that ranking as a baseline.

    python bench/oracle_log.py generate --shape amazon --out /tmp/oracle/log.txt
    python -m flanrec.quickstart --dataset sequences --data_dir /tmp/oracle/data \
        --model_dir /tmp/oracle/run --prepare_args "--raw_dir /tmp/oracle/log.txt \
        --train_vocab --task_prefix oracle"
    python bench/oracle_log.py rank --params /tmp/oracle/log.params.npz \
        --data_dir /tmp/oracle/data --split test --out /tmp/oracle/run/baselines_test
    python -m flanrec.eval --predictions /tmp/oracle/run/infer_test \
        --baselines /tmp/oracle/run/baselines_test --data_dir /tmp/oracle/data \
        --out /tmp/oracle/run/eval_oracle

Why: a score on a real log says nothing about how far a recipe is from what the data allows.
Here the process that wrote the log is known, so the Bayes-optimal ranking of every
validation and test query can be computed exactly, and each system is reported as a fraction
of it (the `bayes_optimal` row `flanrec.eval` puts beside popularity and SASRec). A recipe that
reaches 95% of the oracle here and trails SASRec on a real log is short of data, not of
modelling; one at 60% here is short of modelling.

The process (all of it in ``<out>.params.npz``):

- each user has a latent taste cluster ``c`` (uniform over K clusters), never written out;
- each item has a home cluster; cluster ``c`` prefers its home items (``affinity`` times
  their global popularity, a Zipf law over items);
- each item has three successors in its home cluster (weights 0.5, 0.3, 0.2): what people
  move on to after it;
- a user's first item is drawn from the cluster's preference ``theta_c``; each next item from
  ``alpha * successors(previous) + (1 - alpha) * theta_c``, renormalised over the items the
  user has not had yet (items never repeat, as in 5-core logs and the protocol's masking).

The oracle ranks a query's unseen items by ``P(next | whole history)``: the cluster
posterior from the exact likelihood of the history, mixed over clusters. Sorting by that
probability maximises the expected NDCG@k of a query with one relevant item, so no system can
beat it in expectation; on a finite test split one can by chance, by about the interval
`flanrec.eval` prints. ``rank`` also prints the oracle's expected NDCG@10 (the mean over
queries of sum_r p_(r) / log2(r + 1)), the optimum free of the targets' sampling noise.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence

import numpy as np

# users, items, clusters, minimum and median sequence length
SHAPES: dict[str, tuple[int, int, int, int, int]] = {
    "tiny": (400, 60, 3, 5, 6),
    "amazon": (6_000, 2_000, 40, 5, 6),      # Amazon 5-core's shape: short sequences
    "movielens": (1_000, 1_600, 20, 20, 60),  # MovieLens' shape: long sequences
}
SUCCESSOR_WEIGHTS = np.array([0.5, 0.3, 0.2])


@dataclasses.dataclass(frozen=True)
class Process:
    """The generating process: everything the oracle needs."""

    theta: np.ndarray       # [K, N] float64, each row sums to 1: a cluster's item preference
    successors: np.ndarray  # [N, S] int: each item's successors
    alpha: float            # weight of the successor step against the cluster's preference

    @property
    def num_items(self) -> int:
        return self.theta.shape[1]

    def transition_row(self, prev: int) -> np.ndarray:
        """alpha * successors(prev) as a dense [N] row (before renormalisation)."""
        row = np.zeros(self.num_items)
        np.add.at(row, self.successors[prev], self.alpha * SUCCESSOR_WEIGHTS)
        return row

    def save(self, path: str) -> None:
        tmp = path + ".tmp.npz"
        np.savez(tmp, theta=self.theta, successors=self.successors,
                 alpha=np.array(self.alpha))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str) -> Process:
        try:
            with np.load(path) as f:
                return cls(theta=f["theta"], successors=f["successors"],
                           alpha=float(f["alpha"]))
        except (OSError, KeyError, ValueError) as e:
            raise SystemExit(f"{path}: not a params file written by `oracle_log.py generate` "
                             f"({e})") from None


def item_id(i: int) -> str:
    return f"i{i}"


def user_id(u: int) -> str:
    return f"u{u}"


def make_process(items: int, clusters: int, rng: np.random.Generator, alpha: float = 0.6,
                 affinity: float = 30.0) -> Process:
    popularity = 1.0 / np.arange(1, items + 1)
    popularity = popularity[rng.permutation(items)]
    home = rng.integers(clusters, size=items)
    theta = np.tile(popularity, (clusters, 1))
    theta[home, np.arange(items)] *= affinity
    theta /= theta.sum(axis=1, keepdims=True)
    successors = np.empty((items, len(SUCCESSOR_WEIGHTS)), dtype=np.int64)
    for i in range(items):
        pool = np.flatnonzero((home == home[i]) & (np.arange(items) != i))
        if len(pool) < len(SUCCESSOR_WEIGHTS):
            pool = np.setdiff1d(np.arange(items), [i])
        successors[i] = rng.choice(pool, size=len(SUCCESSOR_WEIGHTS), replace=False)
    return Process(theta=theta, successors=successors, alpha=alpha)


def sample_sequences(process: Process, users: int, min_len: int, median_len: int,
                     rng: np.random.Generator) -> list[list[int]]:
    """Each user's items in time order: at least ``min_len``, median about ``median_len``."""
    k, n = process.theta.shape
    extra = max(median_len - min_len, 0)
    p = 1.0 - 0.5 ** (1.0 / (extra + 1)) if extra else 1.0  # geometric with that median
    lengths = np.minimum(min_len + rng.geometric(p, size=users) - 1, n)
    out = []
    for length in lengths.tolist():
        c = int(rng.integers(k))
        seen = np.zeros(n, dtype=bool)
        seq: list[int] = []
        weights = process.theta[c].copy()
        while len(seq) < length:
            if seq:
                weights = process.transition_row(seq[-1]) + (1 - process.alpha) * process.theta[c]
            w = np.where(seen, 0.0, weights)
            item = int(rng.choice(n, p=w / w.sum()))
            seen[item] = True
            seq.append(item)
        out.append(seq)
    return out


def next_item_probs(process: Process, history: Sequence[int]) -> np.ndarray:
    """P(next item | the whole history) over all items (0 for the history's own items)."""
    theta, alpha = process.theta, process.alpha
    k, n = theta.shape
    log_post = np.zeros(k)  # uniform prior
    seen = np.zeros(n, dtype=bool)
    seen_theta = np.zeros(k)  # sum over seen items of theta_c
    for t, item in enumerate(history):
        if t == 0:
            num, den = theta[:, item], np.ones(k)
        else:
            prev = history[t - 1]
            succ = process.successors[prev]
            succ_seen = float(np.sum(alpha * SUCCESSOR_WEIGHTS * seen[succ]))
            succ_item = float(np.sum(alpha * SUCCESSOR_WEIGHTS * (succ == item)))
            num = succ_item + (1 - alpha) * theta[:, item]
            den = 1.0 - succ_seen - (1 - alpha) * seen_theta
        log_post += np.log(num) - np.log(den)
        seen[item] = True
        seen_theta += theta[:, item]
    post = np.exp(log_post - log_post.max())
    post /= post.sum()
    if history:
        prev = history[-1]
        den = 1.0 - float(np.sum(alpha * SUCCESSOR_WEIGHTS * seen[process.successors[prev]])) \
            - (1 - alpha) * seen_theta
        probs = (post / den) @ ((1 - alpha) * theta) + process.transition_row(prev) * float(
            np.sum(post / den))
    else:
        probs = post @ theta
    probs[seen] = 0.0
    return probs / probs.sum()


def expected_ndcg(sorted_probs: np.ndarray, k: int = 10) -> float:
    """E[NDCG@k] of a ranking whose top items have these probabilities of being the target."""
    top = sorted_probs[:k]
    return float(np.sum(top / np.log2(np.arange(2, len(top) + 2))))


def generate(shape: str, out: str, seed: int = 0, users: int | None = None,
             items: int | None = None) -> tuple[int, str]:
    """Write the log (one line per user) and ``<out minus .txt>.params.npz``."""
    du, di, clusters, min_len, median_len = SHAPES[shape]
    users, items = users or du, items or di
    rng = np.random.default_rng(seed)
    process = make_process(items, clusters, rng)
    seqs = sample_sequences(process, users, min_len, median_len, rng)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    params = os.path.splitext(out)[0] + ".params.npz"
    tmp = out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for u, seq in enumerate(seqs):
            f.write(" ".join([user_id(u), *(item_id(i) for i in seq)]) + "\n")
    process.save(params)
    os.replace(tmp, out)
    return sum(len(s) for s in seqs), params


def _item_index(raw: str, num_items: int, where: str) -> int:
    if not raw.startswith("i") or not raw[1:].isdigit() or int(raw[1:]) >= num_items:
        raise SystemExit(f"{where}: item {raw!r} is not one of the generated log's "
                         f"i0..i{num_items - 1}: the data dir was not prepared from the log "
                         "these params belong to")
    return int(raw[1:])


def rank(params: str, data_dir: str, stage: str, out: str, k: int = 20) -> dict[str, float]:
    """Write the top-k of the split's ``stage`` queries as the `bayes_optimal` baseline."""
    from flanrec import metrics as metrics_lib
    from flanrec.baselines import common
    from flanrec.data import prepared

    process = Process.load(params)
    split = prepared.load_split(data_dir)
    examples = common.queries(split, stage)
    by_user = {s.user: s for s in split.users}
    # The protocol ranks the file's items: one the process can emit but no user happened to
    # pick is not in the catalogue, so no system could name it.
    in_catalogue = np.zeros(process.num_items, dtype=bool)
    in_catalogue[[_item_index(i, process.num_items, data_dir) for i in split.all_items]] = True
    ranked, scores, expected = [], [], []
    for ex in examples:
        seq = by_user[ex.user]
        full = seq.train_items + ([seq.valid_item] if stage == "test" else [])
        history = [_item_index(i, process.num_items, f"{data_dir}: user {ex.user}")
                   for i in full]
        probs = np.where(in_catalogue, next_item_probs(process, history), 0.0)
        probs /= probs.sum()
        top = np.argsort(-probs, kind="stable")[:k]
        ranked.append([item_id(int(i)) for i in top])
        scores.append([float(probs[i]) for i in top])
        expected.append(expected_ndcg(probs[top]))
    common.write_predictions(out, "bayes_optimal", common.prediction_rows(
        "bayes_optimal", stage, examples, ranked, scores))
    m = metrics_lib.ranking_metrics(ranked, [ex.target for ex in examples], ks=(10,))
    return {"ndcg@10": m["ndcg@10"], "hr@10": m["hr@10"],
            "expected_ndcg@10": float(np.mean(expected)), "queries": len(examples)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="write a log and its process")
    g.add_argument("--shape", choices=sorted(SHAPES), default="amazon")
    g.add_argument("--out", required=True, help="the log, one line per user (.txt)")
    g.add_argument("--users", type=int, default=None)
    g.add_argument("--items", type=int, default=None)
    g.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("rank", help="write the Bayes-optimal ranking as a baseline")
    r.add_argument("--params", required=True, help="the .params.npz `generate` wrote")
    r.add_argument("--data_dir", required=True, help="prepared from the generated log")
    r.add_argument("--split", choices=("validation", "test"), default="test")
    r.add_argument("--out", required=True, help="a baselines dir (flanrec.baselines --out)")
    r.add_argument("--k", type=int, default=20)
    args = ap.parse_args(argv)
    if args.command == "generate":
        n, params = generate(args.shape, args.out, args.seed, args.users, args.items)
        print(f"{args.out}: {n:,} interactions ({args.shape}); process in {params}")
        return
    m = rank(args.params, args.data_dir, args.split, args.out, args.k)
    print(f"oracle on {args.split} ({m['queries']:,} queries): NDCG@10 {m['ndcg@10']:.4f} "
          f"HR@10 {m['hr@10']:.4f}; expected NDCG@10 {m['expected_ndcg@10']:.4f}",
          file=sys.stdout)


if __name__ == "__main__":
    main()
