"""The `seqrec` family: many next-item targets per example, SASRec-style.

Its targets are a run of item IDs without EOS (the decoder continues from one item to the
next); inference ranks the last item after feeding the others as a prefix. Uncapped in
mixtures, rated by its train target items (`train_targets`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from flanrec.data import templates
from flanrec.data.choice import choose_template, shard
from flanrec.data.examples import (
    Example,
    check_split_name,
    item_list,
    queries,
    render_example,
    template_pool,
)
from flanrec.data.families.core import (
    Family,
    FamilyData,
    builder_kwargs,
    option,
    register,
)
from flanrec.data.indexing import ItemIndex
from flanrec.data.types import ItemMeta, Split

SEQREC_WINDOW = 40
SEQREC_ENCODER_ITEMS = 10
SEQREC_TILINGS = 2

# The decoder continues the history item by item ({target}: the next items, space
# separated, no EOS), so the instruction asks for the movies that follow, in order.
SEQREC_TEMPLATES: list[tuple[str, str]] = [
    ("User {user} started with these movies: {history}. List the movies they watched "
     "next, in order.", "{target}"),
    ("Here are the first movies user {user} watched: {history}. Continue their viewing "
     "history, one movie ID at a time.", "{target}"),
    ("Continue the viewing sequence of user {user}, who began with {history}.",
     "{target}"),
    ("{history}\n\nThese are the earliest films in user {user}'s history. Which films "
     "follow, in the order watched?", "{target}"),
    ("User {user} watched {history}. Predict the movies they watch afterwards, oldest "
     "first.", "{target}"),
    ("Viewing log of user {user} so far: {history}\nNext movies:", "{target}"),
    ("After {history}, what did user {user} watch next? List the movies in order.",
     "{target}"),
    ("I am user {user}. I started with {history}. What did I watch after that, in "
     "order? Answer with movie IDs.", "{target}"),
    # unseen
    ("Given the opening of user {user}'s watch history ({history}), write out the rest "
     "of it.", "{target}"),
    ("Which movies, in sequence, did user {user} stream after {history}?", "{target}"),
]
templates.register_templates(
    "seqrec", {"history", "target", "user"}, SEQREC_TEMPLATES,
    answer_fields=templates.BUILTIN_ANSWER_FIELDS)


def seqrec_windows(n_items: int, window: int, tilings: int) -> list[tuple[int, int, int]]:
    """(tiling, start, end) target ranges ``[start, end)`` covering positions 1..n_items-1.

    Each tiling cuts the positions into consecutive windows of ``window`` targets, counted
    from the most recent item backwards (as SASRec does), tiling ``t`` shifted by
    ``t * window // tilings``; so every training item but the first is a target once per
    tiling, and different tilings give it different contexts. A window an earlier tiling
    already cut (same start and end: a sequence too short for the shift to move a cut) is
    left out, because it would be the identical example again: on short-sequence logs (a
    median of 4 train items on Amazon 5-core) that halves an epoch's work for the same
    information. Position 0 is never a target: nothing precedes it.
    """
    if window < 1 or tilings < 1:
        raise ValueError(f"window and tilings must be >= 1, got {window}, {tilings}")
    out: list[tuple[int, int, int]] = []
    cut: set[tuple[int, int]] = set()
    for t in range(tilings):
        ends = [n_items]
        shift = (t * window) // tilings
        if shift and n_items - shift > 1:
            ends.append(n_items - shift)
        while ends[-1] - window > 1:
            ends.append(ends[-1] - window)
        bounds = [1] + sorted(set(ends))
        for a, e in zip(bounds, bounds[1:], strict=False):
            if e > a and (a, e) not in cut:
                cut.add((a, e))
                out.append((t, a, e))
    return out


def seqrec_eval_split(history: Sequence[str], window: int, encoder_items: int
                      ) -> tuple[list[str], list[str]]:
    """(encoder items, decoder prefix) of an evaluation query's history.

    The prefix is the most recent ``window - 1`` items (at most: training never puts more
    items before a target inside one window), always leaving at least one item to the
    encoder, which holds up to ``encoder_items`` items before the prefix: the same two
    contexts a training target sees.
    """
    n_prefix = max(0, min(window - 1, len(history) - 1))
    cut = len(history) - n_prefix
    return list(history[max(0, cut - encoder_items):cut]), list(history[cut:])


def seqrec_examples(split: Split, index: ItemIndex, meta: ItemMeta | None = None,
                    split_name: str = "train", seed: int = 0,
                    template_types: Sequence[str] = ("seen",), template_idx: int | None = None,
                    window: int = SEQREC_WINDOW, encoder_items: int = SEQREC_ENCODER_ITEMS,
                    tilings: int = SEQREC_TILINGS, max_history: int | None = None,
                    shard_index: int = 0, num_shards: int = 1, task_prefix: str = ""
                    ) -> Iterator[Example]:
    """Next-item prediction trained the way SASRec-class models are: many targets per pass.

    The encoder reads the instruction and up to ``encoder_items`` items; the targets are the
    ``window`` items that follow, space separated, one per decoder position, with no EOS.
    Teacher forcing then trains every position at once: position j predicts the next item
    from the encoder's items plus the j items before it in the decoder (causal attention),
    so one example carries up to ``window`` item predictions instead of one.

    validation/test: the protocol's query per user. The query's history (at most
    ``max_history`` items) is split as a training target would see it
    (:func:`seqrec_eval_split`): older items in the encoder, the most recent ones as the
    decoder prefix; ``targets`` is the prefix followed by the target item, so inference
    feeds all but the last item to the decoder and ranks the item that comes next.
    """
    check_split_name(split_name)
    family = "seqrec"
    pool = template_pool(family, template_types, template_idx)
    ids = index.item_to_id

    def render(key: str, user: str, enc: Sequence[str], dec: Sequence[str],
               target_item: str) -> Example:
        idx = choose_template(seed, family, split_name, key, pool)
        fields = {"user": user, "history": item_list(index, enc),
                  "target": " ".join(ids[i] if i in ids else index.id_of(i) for i in dec)}
        return render_example(family, task_prefix + family, idx, fields, key, user=user,
                       target_item=target_item)

    specs = _seqrec_specs(split, split_name, window, encoder_items, tilings, max_history)
    for spec in shard(specs, shard_index, num_shards):
        yield render(*spec)


def _seqrec_specs(split: Split, split_name: str, window: int, encoder_items: int, tilings: int,
                  max_history: int | None
                  ) -> Iterator[tuple[str, str, list[str], list[str], str]]:
    """(key, user, encoder items, decoder items, target item) of every seqrec example."""
    if split_name == "train":
        for s in split.users:
            items = s.train_items
            for t, a, e in seqrec_windows(len(items), window, tilings):
                yield (f"{s.user}:{t}:{a}", s.user, items[max(0, a - encoder_items):a],
                       items[a:e], "")
    else:
        for key, user, history, target in queries(split, split_name, max_history):
            enc, prefix = seqrec_eval_split(history, window, encoder_items)
            yield key, user, enc, prefix + [target], target


def _shape(data: FamilyData) -> dict[str, int]:
    """The window, encoder items and tilings prepare recorded for the dir."""
    return dict(window=int(option(data, "seqrec_window", SEQREC_WINDOW)),
                encoder_items=int(option(data, "seqrec_encoder_items", SEQREC_ENCODER_ITEMS)),
                tilings=int(option(data, "seqrec_tilings", SEQREC_TILINGS)))


def examples(data: FamilyData, split_name: str, template_types: Sequence[str] = ("seen",),
             shard_index: int = 0, num_shards: int = 1) -> Iterator[Example]:
    return seqrec_examples(data.split, data.index, data.meta,
                           max_history=data.options.get("max_history"), **_shape(data),
                           **builder_kwargs(data, split_name, template_types, shard_index,
                                            num_shards))


def count(data: FamilyData, split_name: str) -> int:
    """Counted from the windows' specs, none rendered."""
    check_split_name(split_name)
    shape = _shape(data)
    return sum(1 for _ in _seqrec_specs(data.split, split_name, shape["window"],
                                        shape["encoder_items"], shape["tilings"],
                                        data.options.get("max_history")))


def train_targets(data: FamilyData) -> int:
    """Item predictions that carry loss in the train split: every train item but the
    first, once per distinct window (:func:`seqrec_windows`), counted without rendering."""
    shape = _shape(data)
    return sum(e - a for s in data.split.users
               for _, a, e in seqrec_windows(len(s.train_items), shape["window"],
                                             shape["tilings"]))


FAMILY = register(Family(name="seqrec", target_kind="item", examples=examples, count=count,
                         template_families=("seqrec",), targets_eos=False,
                         target_layout="item_sequence", mixture_cap=None,
                         train_targets=train_targets, order=20))
