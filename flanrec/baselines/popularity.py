"""Most-popular baseline, exactly as the ml100k-loo protocol defines it.

* Popularity = number of times an item occurs among the *training* items ``i_1 .. i_{n-2}``
  of all users. The same counts serve the test stage: the protocol's models are never
  trained on validation items ("no retraining on validation data"), and a baseline that
  counted them would see data the models under comparison do not. It also keeps the
  baseline a fixed function of the training data, like the item index.
* Per user, seen items are masked (train items for validation; train + validation items
  for test), *then* the list is cut to K.
* Ties in count are broken by the lower item id (numeric order for integer ids, via
  ``flanrec.data.splits.id_sort_key``), so the ranking is deterministic.

Because the result is a deterministic function of the split, it doubles as a check of the
split and of the metric code (see the protocol).
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from flanrec.data import splits, types


def train_counts(split: types.Split) -> dict[str, int]:
    """item -> occurrences among all users' training items (0 for catalogue-only items)."""
    counts = Counter(item for seq in split.users for item in seq.train_items)
    return {item: counts.get(item, 0) for item in split.all_items}


def global_order(split: types.Split) -> tuple[list[str], np.ndarray]:
    """Catalogue items by descending train count, ties by ascending id; with their counts."""
    counts = train_counts(split)
    key = splits.id_sort_key(split.all_items)
    order = sorted(split.all_items, key=lambda item: (-counts[item], key(item)))
    return order, np.array([counts[i] for i in order], dtype=np.float64)


def recommend(split: types.Split, stage: str, k: int = 20
              ) -> tuple[list[splits.EvalExample], list[list[str]], list[list[float]]]:
    """The protocol's queries for ``stage`` and, per user, the top-``k`` unseen items with
    their counts as scores."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    order, counts = global_order(split)
    examples = splits.eval_examples(split, stage)
    ranked, scores = [], []
    for ex in examples:
        seen = set(ex.seen)
        items, sc = [], []
        for item, c in zip(order, counts, strict=True):
            if item in seen:
                continue
            items.append(item)
            sc.append(float(c))
            if len(items) == k:
                break
        ranked.append(items)
        scores.append(sc)
    return examples, ranked, scores
