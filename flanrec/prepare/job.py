"""`python -m flanrec.prepare`: raw logs -> split -> item index -> instruction tasks on disk.

One offline job, run once per dataset, so that training only reads files:

    python -m flanrec.prepare --dataset ml-100k --out ~/.cache/flanrec/prepared/ml-100k

fetch (H3's `flanrec.data.fetch`) -> read -> leave-one-out split (ml100k-loo exactly) ->
fit each item index on train sequences only -> render every task family for every split
(`flanrec.data.examples`) -> sharded TFRecords + info.json per task -> optional SentencePiece
training -> prefix tries of the valid item IDs. Everything is built in a scratch directory this
run creates and published by `flanrec.files.outputs.staged_dir` (one rename locally; on gs:// the
files are uploaded and the ownership marker written last), so a crash never leaves a
half-prepared directory that tasks would register. An existing `--out` is replaced only when
it is a flanrec.prepare output; anything else is refused before any work, and nothing outside
the scratch directory is ever deleted.

Layout of OUT (the contract `tasks/` and the trainer read; the names are
`flanrec.data.layout`'s, read back by `flanrec.data.prepared`, written by
`flanrec.data.prepared_write`; the command line is `flanrec.prepare.cli`):

    prepare.json                      dataset, options, counts, fingerprints, timings
    .flanrec-output.json              ownership marker (job "prepare"), written last
    split/split.json                  per-user sequences (train items/ratings/timestamps,
                                      valid/test item and rating), catalogue, max_history
    split/sequences.tsv               user \\t i_1 ... i_n (the protocol's fingerprint text)
    split/items.tsv                   item \\t title \\t year \\t categories
    index/token_slots.json            new ID token -> vocabulary id (union of indexings)
    index/{method}/item_index.json    raw item -> ID string (flanrec.data.indexing format)
    index/{method}/trie.npz           prefix trie of item IDs as token ids (+ EOS), when a
                                      vocabulary was available; `items` gives item order
    index/{method}/trie_noeos.npz     the same without EOS, for the seqrec family (whose
                                      targets run on into the next item)
    vocab/spm.model                   with --train_vocab
    tasks/{task}/{split}.tfrecord-0000i-of-0000n, tasks/{task}/info.json
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from flanrec.data import data_stats as stats_lib
from flanrec.data import families as families_lib
from flanrec.data import layout
from flanrec.data import splits as splits_lib
from flanrec.data.fetch import fetch
from flanrec.data.prepared import EXAMPLES_REVISION
from flanrec.data.prepared_write import build_tries, write_split
from flanrec.data.sources import read_dataset
from flanrec.errors import UserError
from flanrec.files import outputs, storage
from flanrec.frontend.progress import stage
from flanrec.prepare.index import fit_indexes
from flanrec.prepare.options import PrepareOptions, check_options

if TYPE_CHECKING:  # annotations only: the job imports the data layer lazily (fast --help)
    from flanrec.data.indexing import ItemIndex
    from flanrec.data.types import Dataset, Split

INDEX_SUFFIX = {
    "sequential": "seqidx",
    "random": "randidx",
    "title": "titleidx",
    "collaborative": "cfidx",
    "semantic": "semidx",
}
DATASET_ALIASES = {
    "amazon-beauty": "amazon-2014-Beauty",
    "amazon-sports": "amazon-2014-Sports_and_Outdoors",
    "amazon-toys": "amazon-2014-Toys_and_Games",
}
# The task families are objects in flanrec.data.families; these are views of the built-ins
# for the CLI (its --families choices and help).
FAMILIES = families_lib.BUILTIN_FAMILIES
INDEXED_FAMILIES = tuple(f for f in FAMILIES if families_lib.get(f).indexed)
# Families whose targets are a sequence of item IDs without EOS (the decoder continues from
# one item to the next); inference ranks the last item after feeding the others as a prefix.
SEQUENCE_FAMILIES = tuple(f for f in FAMILIES
                          if families_lib.get(f).target_layout == "item_sequence")


def task_prefix_for(dataset: str) -> str:
    """ml-100k -> ml100k, amazon-2014-Beauty -> amazon_beauty, my-data.csv -> my_data_csv."""
    name = dataset.lower()
    if name.startswith("ml-"):
        return name.replace("-", "")
    if name.startswith("amazon-"):
        parts = [p for p in name.split("-")[1:] if not p.isdigit()]
        return "amazon_" + "_".join(parts)
    return "".join(c if c.isalnum() else "_" for c in name).strip("_") or "data"


# ---------------------------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------------------------


# Dataset kinds read straight from --raw_dir (a user's own files): nothing to fetch.
USER_FILE_KINDS = ("csv", "parquet", "sequences")


def load_dataset(opts: PrepareOptions, out: str | None = None) -> Dataset:
    """fetch + read: `--dataset csv|parquet|sequences` read `--raw_dir` directly (a user's own
    files, nothing to fetch). A `--raw_dir` URL
    (gs://...) is read from a local copy. With `out`, an output that would replace the
    fetched input folder is refused before the input is read."""

    name = DATASET_ALIASES.get(opts.dataset, opts.dataset)
    if name in USER_FILE_KINDS and not opts.raw_dir:
        raise UserError(f"--dataset {name} needs --raw_dir (the file or directory)")
    if name not in ("csv", "parquet") and opts.table_options:
        raise UserError(f"--dataset {opts.dataset} has its own reader: the CSV mapping options "
                        f"({', '.join(sorted(opts.table_options))}) apply to --dataset csv or "
                        "parquet only")
    with storage.local_copy(opts.raw_dir or "") as raw_dir:
        if name in USER_FILE_KINDS:
            return read_dataset(name, raw_dir, **opts.table_options)
        fetched = fetch(name, opts.cache_dir, raw_dir=raw_dir or None,
                        allow_download=opts.allow_download)
        if out is not None and not opts.raw_dir:
            outputs.check_apart(out, {"the fetched dataset": str(fetched.path)})
        return read_dataset(fetched.kind, fetched.path)


class _TextSample:
    """Every k-th train example's inputs/targets text: the corpus a trained vocabulary
    learns from.

    k is 3 (every family's train examples counted in one sequence, task by task) until that
    would exceed `max_examples`; then k grows, so a 10x larger log costs no more vocabulary
    training. Only the chosen examples are rendered (a family's builder skips the others at
    the cost of a spec).
    """

    def __init__(self, every: int = 3, max_examples: int = 200_000):
        self.every = every
        self.max_examples = max_examples
        self.n = 0
        self.texts: list[str] = []
        self.plan: list[tuple[families_lib.Family, families_lib.FamilyData, int, str]] = []
        # task -> (inputs, targets) of its rendered share: the data stats reuse them.
        self.by_task: dict[str, tuple[list[str], list[str]]] = {}

    def add(self, family: families_lib.Family, data: families_lib.FamilyData,
            count: int, task: str = "") -> None:
        self.plan.append((family, data, count, task))

    def render(self) -> None:
        total = sum(n for _, _, n, _ in self.plan)
        every = max(self.every, -(-total // self.max_examples))
        offset = 0
        for family, data, count, task in self.plan:
            first = (-offset) % every  # the global position offset + first is a multiple
            start = len(self.texts)
            if first < count:
                for ex in family.examples(data, "train", ("seen",), first, every):
                    self.texts.append(ex["inputs"])
                    self.texts.append(ex["targets"])
            if task:
                block = self.texts[start:]
                self.by_task[task] = (block[0::2], block[1::2])
            offset += count
        self.n = total


def _family_data(split: Split, dataset: Dataset,
                 index: ItemIndex, opts: PrepareOptions, prefix: str
                 ) -> families_lib.FamilyData:
    return families_lib.FamilyData(split=split, index=index, meta=dataset.items,
                                   users=dataset.users, options=dataclasses.asdict(opts),
                                   seed=opts.seed, task_prefix=prefix)


def write_tasks(split: Split, dataset: Dataset, indexes: dict[str, ItemIndex],
                opts: PrepareOptions, tasks_root: str,
                prefix: str, sample: _TextSample,
                report: Callable[[str], None] | None = None) -> dict[str, dict[str, Any]]:
    """Record every (family, indexing) task; returns task dir -> info.

    A task is its `tasks/<dir>/info.json`: family, item indexing, target kind and layout,
    features and the example count per split. The examples themselves are rendered when
    seqio reads them (flanrec.data.family_source), so what prepare stores grows with the
    interactions, not with families x templates x windows. `report` gets a line per task.
    """
    from flanrec.data import family_source, writer  # lazy: TF + seqio (12 s); fast --help

    methods = list(indexes)
    infos = {}
    todo = sum(len(methods) if families_lib.get(f).indexed else 1 for f in opts.families)
    number = 0
    for name in opts.families:
        if name not in families_lib.names():
            raise UserError(f"unknown family {name!r}; choose from {families_lib.names()}")
        family = families_lib.get(name)
        for n, method in enumerate(methods if family.indexed else methods[:1]):
            suffix = INDEX_SUFFIX[method]
            dirname = family.task_dirname(suffix)
            number += 1
            with stage(f"prepare: task {number}/{todo} {dirname}", log=report) as st:
                data = _family_data(split, dataset, indexes[method], opts, prefix)
                if family.unavailable(data):
                    st["note"] = "skipped: the data has no fields for this family"
                    continue
                splits_out = {}
                for out_split, split_name, _ in family.output_splits():
                    if out_split == families_lib.UNSEEN_SPLIT and not opts.unseen_eval:
                        continue
                    count = family.num_examples(data, split_name)
                    if count:
                        splits_out[out_split] = {"num_input_examples": count}
                if not splits_out:  # e.g. rating tasks of a log without ratings
                    st["note"] = "skipped: no examples"
                    continue
                if "train" in splits_out:
                    sample.add(family, data, splits_out["train"]["num_input_examples"],
                               dirname)
                # Options the data cannot honour degrade (text asked for, IDs only given):
                # said once per family on stderr, and kept in each of its tasks' info.json.
                family_notes = family.notes(data)
                if n == 0:
                    for line in family_notes:
                        warn(f"family {name!r}: {line}")
                info = {
                    "format": writer.INFO_FORMAT,
                    "version": 2,
                    "source": "rendered",
                    "features": family_source.feature_schema(family),
                    "splits": splits_out,
                    "family": name,
                    "indexing": suffix if family.indexed else None,
                    "index_method": method,
                    "index_file": f"index/{method}/item_index.json",
                    "target_kind": family.target_kind,
                    "primary_indexing": n == 0,
                    "targets_eos": family.targets_eos,
                    # Item predictions that carry loss in the train split (what a mixture
                    # rates a seqrec task by: one example holds up to a window of them).
                    "train_targets": (family.train_targets(data) if family.train_targets
                                      else None),
                    "target_layout": family.target_layout,
                }
                if family_notes:
                    info["notes"] = family_notes
                storage.write_json_atomic(os.path.join(tasks_root, dirname, writer.INFO_FILE),
                                          info, sort_keys=True, ensure_ascii=True)
                st["note"] = ", ".join(f"{s} {v['num_input_examples']:,}"
                                       for s, v in splits_out.items())
                infos[dirname] = info
    return infos




def data_stats(split: Split, dataset: Dataset, indexes: dict[str, ItemIndex],
               opts: PrepareOptions, prefix: str, infos: dict[str, dict[str, Any]],
               vocabulary: Any, why_no_vocab: str,
               rendered: dict[str, tuple[list[str], list[str]]]) -> dict[str, Any]:
    """prepare.json's ``stats``: catalogue and user counts, train history lengths, the
    vocabulary's size and, per task and split, input and target token lengths
    (`flanrec.data.data_stats`); a run's 'auto' settings are derived from them.
    `rendered`: the train examples the vocabulary was trained on, per task (a strided
    share), measured instead of rendering a large train split again."""
    out: dict[str, Any] = {"catalogue": len(split.all_items), "users": len(split.users),
                           "history": stats_lib.history_stats(split), "vocab": None,
                           "tasks": {}}
    if vocabulary is None:
        out["tokens_skipped_because"] = why_no_vocab or "no vocabulary"
        return out
    out["vocab"] = stats_lib.vocab_stats(vocabulary)
    for name, info in infos.items():
        family = families_lib.get(info["family"])
        data = _family_data(split, dataset, indexes[info["index_method"]], opts, prefix)
        counts = {s: v["num_input_examples"] for s, v in info["splits"].items()}
        out["tasks"][name] = stats_lib.task_token_stats(family, data, vocabulary, counts,
                                                        bool(info.get("targets_eos", True)),
                                                        rendered_train=rendered.get(name))
    return out


def skipped_families(families: Sequence[str], infos: dict[str, dict[str, Any]],
                     data: families_lib.FamilyData) -> dict[str, str]:
    """family -> why no task of it was written (a log without ratings, users or titles
    makes prepare drop families; say so instead of leaving it to a missing task name).
    Each family says itself what it needs (`Family.unavailable`)."""
    reasons = {}
    for family in families:
        if any(name == family or name.startswith(family + "_") for name in infos):
            continue
        why = families_lib.get(family).unavailable(data)
        reasons[family] = why or "no examples for any split"
    return reasons


def item_pieces(indexes: dict[str, ItemIndex], catalogue: Sequence[str]) -> list[str]:
    """Word-initial ID strings ("▁1234") a trained vocabulary keeps as one piece each.

    One token per item makes the decoder's softmax a full-catalogue classifier (what works
    best for ranking) and lets the seqrec family's targets run from item to item without a
    separator. Only plain IDs qualify: indexings with new tokens (collaborative, semantic)
    place those tokens already, and titles contain spaces.
    """
    out: list[str] = []
    for ix in indexes.values():
        if ix.new_tokens:
            continue
        ids = [ix.id_of(item) for item in catalogue]
        if all(i and not any(c.isspace() for c in i) for i in ids):
            out += ["▁" + i for i in ids]
    return list(dict.fromkeys(out))


# ---------------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------------


def _check_out(opts: PrepareOptions) -> str:
    """--out, normalized, refused when it is (or holds) an input: before any work."""
    out = storage.normalize(opts.out)
    outputs.check_apart(out, {"--raw_dir": opts.raw_dir,
                              "--semantic_embeddings": (opts.semantic_embeddings
                                                        if opts.semantic_embeddings != "tfidf"
                                                        else None),
                              "--semantic_encoder": opts.semantic_encoder})
    return out


_NO_OVERWRITE_HINT = (" and --no_overwrite was given (without it, a flanrec.prepare output "
                      "is replaced once the new one is complete)")


def prepare(opts: PrepareOptions, log: Any = print,
            progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the whole job; returns the prepare.json document.

    `log` gets the final summary table; `progress` (default: stdout) one line as each stage
    starts and ends and, while tasks are rendered, a count-and-rate line every few seconds.
    """
    from flanrec.data import vocab as vocab_lib  # lazy: TF + seqio (12 s); fast --help

    t0 = time.time()
    timings: dict[str, float] = {}

    def lap(name: str, since: list[float] = [t0]) -> None:  # noqa: B006 - a tiny closure clock
        now = time.time()
        timings[name] = round(now - since[0], 3)
        since[0] = now

    check_options(opts)
    if not opts.indexing:
        raise UserError(f"--indexing: expected at least one of {', '.join(INDEX_SUFFIX)}, got "
                        "none")
    for m in opts.indexing:
        if m not in INDEX_SUFFIX:
            raise UserError(f"unknown indexing {m!r}; choose from {sorted(INDEX_SUFFIX)}")
    if not opts.families:
        raise UserError(f"--families: expected at least one of {', '.join(FAMILIES)}, got "
                        "none")
    unknown = [f for f in opts.families if f not in FAMILIES]
    if unknown:
        raise UserError(f"unknown families {unknown}; choose from {FAMILIES}")
    semantic_opts = [f"--{k}" for k in ("semantic_encoder", "semantic_encoder_vocab",
                                         "semantic_embeddings", "semantic_embedding_items")
                     if getattr(opts, k) not in (None, "tfidf")]
    if semantic_opts and "semantic" not in opts.indexing:
        raise UserError(f"{', '.join(semantic_opts)} only apply to --indexing semantic")
    out = _check_out(opts)
    named_families = opts.families != FAMILIES  # asked for by name: refuse, never drop
    prefix = opts.task_prefix or task_prefix_for(opts.dataset)
    if not re.fullmatch(r"[A-Za-z0-9_.:]+", prefix):
        raise UserError(f"--task_prefix: expected letters, digits, '_', '.' or ':' (it "
                        f"starts every seqio task name), got {prefix!r}")
    with outputs.staged_dir(out, "prepare", replace=opts.overwrite,
                            replace_hint=_NO_OVERWRITE_HINT,
                            record={"dataset": opts.dataset}) as tmp:
        with stage(f"prepare: read {opts.dataset}", log=progress) as st:
            dataset = load_dataset(opts, out)
            st["note"] = f"{len(dataset.interactions):,} interactions"
        lap("read")
        with stage("prepare: split (leave-one-out)", log=progress) as st:
            interactions = collapse_duplicates(dataset.interactions, opts.duplicates)
            split = splits_lib.leave_one_out(interactions, max_history=opts.max_history,
                                             kcore=opts.kcore, min_rating=opts.min_rating,
                                             duplicates=None)
            splits_lib.check_usable(split, dataset.interactions.source or opts.dataset)
            report_repeated_targets(split)
            skipped_direct = check_num_candidates(split, opts)
            if skipped_direct:
                opts = dataclasses.replace(opts, families=tuple(
                    f for f in opts.families if f != "direct"))
            fps = splits_lib.fingerprints(split)
            file_hashes = write_split(split, dataset.items, os.path.join(tmp, "split"),
                                      dataset.users)
            st["note"] = f"{len(split.users):,} users, {len(split.all_items):,} items"
        lap("split")
        index_root = os.path.join(tmp, "index")
        with stage(f"prepare: index ({', '.join(opts.indexing)})", log=progress):
            sp_size = vocab_lib.base_piece_count(opts.train_vocab)
            indexes, slots = fit_indexes(split, dataset.items, opts, index_root, sp_size)
        lap("index")
        sample = _TextSample()
        infos = write_tasks(split, dataset, indexes, opts, os.path.join(tmp, "tasks"), prefix,
                            sample, report=progress)
        skipped = skipped_families(opts.families, infos, _family_data(
            split, dataset, indexes[next(iter(indexes))], opts, prefix))
        for family, why in skipped.items():
            log(f"warning: family {family!r} not written: {why}")
        if skipped_direct:  # said on stderr when it was decided
            skipped["direct"] = skipped_direct
        lap("tasks")
        vocab_path = None
        if opts.train_vocab:
            pieces = item_pieces(indexes, split.all_items) if opts.item_pieces else []
            size = opts.vocab_size
            if len(pieces) > size // 2:  # leave room for the words of the templates
                size = len(pieces) + size // 2
                log(f"  vocabulary: {len(pieces)} item pieces, so {size} pieces in all "
                    f"(--vocab_size {opts.vocab_size} is too small to hold them and the text)")
            with stage(f"prepare: vocabulary ({size:,} pieces, SentencePiece)", log=progress):
                sample.render()
                vocab_path = vocab_lib.train_sentencepiece(
                    sample.texts, os.path.join(tmp, "vocab", "spm.model"),
                    vocab_size=size, user_defined_symbols=list(slots) + pieces)
            lap("vocab")
        vocabulary, why_no_vocab = vocab_lib.resolve_prepare_vocab(vocab_path, slots)
        tries = {}
        if vocabulary is not None:
            sequence_methods = [m for m in indexes if any(f in opts.families
                                                          for f in SEQUENCE_FAMILIES)]
            with stage("prepare: item tries", log=progress):
                tries = build_tries(indexes, vocabulary, split.all_items, index_root,
                                    without_eos=sequence_methods)
            _drop_sequence_tasks(tries, infos, os.path.join(tmp, "tasks"), named_families,
                                 log)
            lap("trie")
        with stage("prepare: data stats (token lengths)", log=progress) as st:
            stats = data_stats(split, dataset, indexes, opts, prefix, infos, vocabulary,
                               why_no_vocab, sample.by_task)
            st["note"] = (f"vocabulary {stats['vocab']['size']:,} ids" if stats.get("vocab")
                          else "no vocabulary: token lengths not measured")
        lap("stats")
        doc = {
            "format": "flanrec.prepared",
            "version": 1,
            "examples_revision": EXAMPLES_REVISION,
            "dataset": opts.dataset,
            "task_prefix": prefix,
            "options": {k: (list(v) if isinstance(v, tuple) else v)
                        for k, v in dataclasses.asdict(opts).items()},
            "index_methods": list(indexes),
            "index_suffixes": [INDEX_SUFFIX[m] for m in indexes],
            "counts": {
                "interactions": len(dataset.interactions),
                "users": len(split.users),
                "items": len(split.all_items),
                "train_windows": splits_lib.count_train_windows(split),
                "tasks": {name: {s: v["num_input_examples"] for s, v in info["splits"].items()}
                          for name, info in infos.items()},
            },
            "fingerprints": fps,
            "fingerprints_match_ml100k_loo": (fps == splits_lib.ML100K_FINGERPRINTS
                                              if opts.dataset == "ml-100k" else None),
            "files": file_hashes,
            "skipped_families": skipped,
            "new_tokens": len(slots),
            "semantic_embeddings": (indexes["semantic"].options.get("embedding_source")
                                    if "semantic" in indexes else None),
            "vocab": {
                "trained": "vocab/spm.model" if vocab_path else None,
                "trie_vocab": (str(vocabulary).replace(tmp, out)
                               if vocabulary is not None else None),
                "trie_vocab_id": (vocab_lib.vocabulary_fingerprint(vocabulary)
                                  if vocabulary is not None else None),
                # The SentencePiece file tokenized with, so the dir registers with it later
                # even without FLANREC_VOCAB (vocab.recorded_vocab_path checks its md5).
                **vocab_lib.vocab_source(vocab_path, vocabulary),
                "trie_skipped_because": why_no_vocab or None,
            },
            "tries": tries,
            # What a run derives its shape settings from (flanrec.data.derived).
            "stats": stats,
            "timings_s": timings,
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        doc["timings_s"]["total"] = round(time.time() - t0, 3)
        storage.write_json_atomic(os.path.join(tmp, layout.PREPARE_FILE), doc, ensure_ascii=True)
    log(summary_table(doc, out))
    return doc


def warn(message: str) -> None:
    """A line the user should read but that does not stop the job: on stderr, so it is
    seen even when stdout (the summary) goes to a file."""
    print(f"flanrec.prepare: {message}", file=sys.stderr, flush=True)


def collapse_duplicates(interactions: Any, policy: str) -> Any:
    """Apply `--duplicates` to the log and say on stderr what it did (see
    `splits.drop_duplicates`: one interaction must not be both validation and test item)."""

    kept, dups = splits_lib.drop_duplicates(interactions, policy)
    if dups.removed:
        user, item, stamp, rows = dups.example
        warn(f"{interactions.source or 'the log'}: {dups.removed:,} row(s) repeat the user, "
             f"item and timestamp of another ({dups.groups:,} group(s), "
             f"{dups.rating_differs:,} with different ratings; the first: user {user!r}, "
             f"item {item!r}, timestamp {stamp}, data rows "
             f"{', '.join(map(str, rows[:5]))}); kept the {policy} row of each "
             f"(--duplicates {policy}), {len(kept):,} rows remain")
    return kept


def report_repeated_targets(split: Split) -> None:
    """Say on stderr how many users' held-out item repeats an earlier interaction.

    The split keeps re-interactions (the same item at a later timestamp is a real event),
    but ranking masks what a user has already seen, so such a target cannot be hit: the
    user still counts in HR/NDCG with 0. Printed so that a low score is explained.
    """

    valid, test = splits_lib.repeated_targets(split)
    if valid or test:
        warn(f"re-interactions: {test:,} user(s)' test item and {valid:,} user(s)' "
             "validation item repeat an item they interacted with at an earlier time; the "
             "split keeps them, and ranking masks seen items, so these targets score 0")


def check_num_candidates(split: Split, opts: PrepareOptions) -> str:
    """Refuse a `--num_candidates` the direct family cannot draw for every user.

    A direct question offers the target plus `num_candidates - 1` items the user never
    interacted with; if some user has fewer such items, rendering that user's examples
    would fail later, inside training or a baseline. Asked for by name (--families) or with
    a `--num_candidates` other than the default, that is an error now; as part of the
    default families with the default count, the direct family is left out and the reason
    is returned (and printed).
    """
    if "direct" not in opts.families:
        return ""
    catalogue = set(split.all_items)
    fewest, who = len(catalogue), None
    for s in split.users:
        queried = len(s.train_items) >= 2 or (s.valid_item is not None and s.train_items)
        if not queried:
            continue
        seen = set(s.train_items) | {i for i in (s.valid_item, s.test_item) if i is not None}
        free = len(catalogue - seen)
        if free < fewest:
            fewest, who = free, s.user
    if who is None or fewest >= opts.num_candidates - 1:
        return ""
    why = (f"--num_candidates {opts.num_candidates}: user {who!r} has interacted with all "
           f"but {fewest} of the {len(catalogue):,} catalogue items, so a direct question "
           f"can offer at most {fewest + 1} options (the target and {fewest} unseen items)")
    default = PrepareOptions.__dataclass_fields__["num_candidates"].default
    if opts.families != FAMILIES or opts.num_candidates != default:
        fix = (f"pass --num_candidates {fewest + 1} or fewer, or leave out" if fewest
               else "leave out")
        raise UserError(f"{why}; {fix} the direct family (--families)")
    warn(f"family 'direct' not written: {why}")
    return why


def _drop_sequence_tasks(tries: dict[str, dict[str, Any]], infos: dict[str, Any],
                         tasks_root: str, named_families: bool, log: Any) -> None:
    """Remove seqrec tasks whose item IDs are not one fixed number of tokens.

    Their targets run from one item into the next without EOS, so an item must end where its
    tokens end. Asked for by name (--families), that is an error; as part of the default
    family list, the task is dropped with a warning naming the fix.
    """
    for method, info in tries.items():
        why = info.get("noeos_error")
        if not why:
            continue
        for family in SEQUENCE_FAMILIES:
            dirname = f"{family}_{INDEX_SUFFIX[method]}"
            if dirname not in infos:
                continue
            msg = (f"{family} with --indexing {method}: {why} under this vocabulary; prepare "
                   "with --train_vocab (every item ID becomes one piece) or an indexing of "
                   "fixed-length codes")
            if named_families:
                raise UserError(msg)
            log(f"  warning: task {dirname} skipped: {msg}")
            shutil.rmtree(os.path.join(tasks_root, dirname))
            del infos[dirname]


def summary_table(doc: dict[str, Any], out: str) -> str:
    c = doc["counts"]
    lines = [
        f"prepared {doc['dataset']} -> {out}  ({doc['timings_s']['total']:.1f} s)",
        f"  {c['interactions']:,} interactions, {c['users']:,} users, {c['items']:,} items, "
        f"{c['train_windows']:,} train windows; indexings: {', '.join(doc['index_methods'])}",
    ]
    if doc.get("fingerprints_match_ml100k_loo") is not None:
        lines.append(f"  ml100k-loo fingerprints match: {doc['fingerprints_match_ml100k_loo']}")
    splits = sorted({s for t in c["tasks"].values() for s in t},
                    key=lambda s: ("train", "validation", "test", "test_unseen").index(s)
                    if s in ("train", "validation", "test", "test_unseen") else 9)
    head = f"  {'task':28s}" + "".join(f"{s:>13s}" for s in splits)
    lines += [head, "  " + "-" * (len(head) - 2)]
    for name, counts in sorted(c["tasks"].items()):
        task = f"{doc['task_prefix']}_{name}"
        lines.append(f"  {task:28s}" + "".join(
            f"{counts[s]:>13,d}" if s in counts else f"{'-':>13s}" for s in splits))
    if doc["vocab"]["trie_skipped_because"]:
        lines.append(f"  tries skipped: {doc['vocab']['trie_skipped_because']}")
    return "\n".join(lines)
