"""What a model needs to know of a prepared dir, measured once by `prepare`.

A training run's shape settings follow from the data: how long the tokenized inputs and
targets are (`TASK_FEATURE_LENGTHS`), how many ids the vocabulary has (`VOCAB_SIZE`), how
many examples one epoch holds (a budget in epochs). Measured here, at the moment the data is
written, and stored under ``stats`` in prepare.json, a run reads them in milliseconds
(`flanrec.data.derived`) instead of every user learning three macros before a first result.

Token lengths count the ids seqio feeds the model, EOS included where the feature appends
one, in the task's own vocabulary. Rendering and tokenizing every example of every family
would cost ~20 s on ML-100K (half a million examples), more than the rest of `prepare`
together; so a (task, split) with up to `EXACT_LIMIT` examples is measured whole (the
seqrec family's train windows, every validation and test split of a small log) and a
larger one (and an evaluation split of more than `SAMPLE`) on an evenly strided sample of
about `SAMPLE` examples: for a train split, taken from the strided share `prepare` already
rendered to train the vocabulary on; otherwise every n-th example (the family's own
sharding). The record says which (``measured`` vs
``examples``); the train job's length check still samples the stream it trains on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import seqio

    from flanrec.data.families import Family, FamilyData
    from flanrec.data.types import Split

EXACT_LIMIT = 8_000
SAMPLE = 1_000


def _summary(lengths: Sequence[int]) -> dict[str, Any]:
    arr = np.asarray(lengths, np.int64)
    return {"p50": int(np.ceil(np.percentile(arr, 50))),
            "p99": int(np.ceil(np.percentile(arr, 99))), "max": int(arr.max()),
            "mean": round(float(arr.mean()), 2)}


def length_pairs(in_lens: Sequence[int], tg_lens: Sequence[int]) -> list[list[int]]:
    """[[input length, target length, examples], ...] of the measured examples, sorted: the
    joint distribution packing depends on (a packed row closes when either feature is
    full), compact (a few hundred distinct pairs) where a list of every example is not."""
    counts: dict[tuple[int, int], int] = {}
    for pair in zip(in_lens, tg_lens, strict=True):
        counts[pair] = counts.get(pair, 0) + 1
    return [[i, t, n] for (i, t), n in sorted(counts.items())]


def history_stats(split: Split) -> dict[str, Any]:
    """Train history length per user (items before the validation item): p50/p99/max/mean,
    and the `max_history` the families cut histories to."""
    lens = [len(u.train_items) for u in split.users]
    out = {**_summary(lens or [0]), "max_history": int(split.max_history)}
    return out


def _tokenizer(vocabulary: seqio.Vocabulary) -> Any:
    """The SentencePiece processor behind a seqio vocabulary (batch encode in C++), or None
    for a vocabulary without one (then `vocabulary.encode` one text at a time)."""
    try:
        return vocabulary.tokenizer  # type: ignore[attr-defined]
    except AttributeError:
        return None


def _encoded_lengths(vocabulary: seqio.Vocabulary, texts: list[str]) -> list[int]:
    tok = _tokenizer(vocabulary)
    if tok is not None:  # item-token vocabularies extend this processor: same ids
        return [len(ids) for ids in tok.encode(texts, num_threads=1)]
    return [len(vocabulary.encode(t)) for t in texts]


def task_token_stats(family: Family, data: FamilyData, vocabulary: seqio.Vocabulary,
                     counts: Mapping[str, int], targets_eos: bool,
                     exact_limit: int = EXACT_LIMIT, sample: int = SAMPLE,
                     rendered_train: tuple[list[str], list[str]] | None = None
                     ) -> dict[str, dict[str, Any]]:
    """split -> {examples, measured, inputs: {p50, p99, max, mean}, targets: {...}} for one
    task, and for the train split `pairs` (`length_pairs`), from which a run estimates how
    many examples a packed row holds (`flanrec.data.derived`).

    `counts` are the task's example counts per output split (prepare.json's); splits
    without examples are left out. `rendered_train`: (inputs, targets) texts of an evenly
    strided share of the train split already rendered (the vocabulary's corpus); a large
    train split is sampled from them instead of rendered again."""
    out: dict[str, dict[str, Any]] = {}
    for out_split, split_name, template_types in family.output_splits():
        n = int(counts.get(out_split, 0))
        if not n:
            continue
        limit = exact_limit if out_split == "train" else sample
        every = 1 if n <= limit else math.ceil(n / sample)
        inputs: list[str] = []
        targets: list[str] = []
        if every > 1 and out_split == "train" and rendered_train and rendered_train[0]:
            step = max(1, math.ceil(len(rendered_train[0]) / sample))
            inputs, targets = rendered_train[0][::step], rendered_train[1][::step]
        else:
            for ex in family.examples(data, split_name, template_types, 0, every):
                inputs.append(ex["inputs"])
                targets.append(ex["targets"])
        if not inputs:
            continue
        in_lens = [k + 1 for k in _encoded_lengths(vocabulary, inputs)]
        tg_lens = [k + int(targets_eos) for k in _encoded_lengths(vocabulary, targets)]
        out[out_split] = {"examples": n, "measured": len(inputs),
                          "inputs": _summary(in_lens), "targets": _summary(tg_lens)}
        if out_split == "train":
            out[out_split]["pairs"] = length_pairs(in_lens, tg_lens)
    return out


def vocab_stats(vocabulary: seqio.Vocabulary) -> dict[str, Any]:
    """`size`: the ids a model must embed (pieces + extra ids + item-token slots), as seqio
    counts them; `pieces`: those of the SentencePiece processor it tokenizes with."""
    tok = _tokenizer(vocabulary)
    return {"size": int(vocabulary.vocab_size),
            "pieces": int(tok.get_piece_size()) if tok is not None else None}


__all__ = ["EXACT_LIMIT", "SAMPLE", "history_stats", "length_pairs", "task_token_stats",
           "vocab_stats"]
