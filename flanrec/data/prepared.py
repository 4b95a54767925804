"""Read back what ``flanrec.prepare`` wrote: the split, the catalogue, the item index, the
token slots and the item trie. The one reader of a prepared directory.

The inference job, the ensembles, the evaluation job and the baselines all rank against the
same split and mask the same seen items; reading the prepared directory (not re-deriving the
split from raw files, nor importing the prepare job) guarantees that, and checks the
fingerprint ``prepare`` recorded so a hand-edited or half-copied directory fails loudly
instead of producing quietly different metrics. File names come from
``flanrec.data.layout``; the writers are in ``flanrec.data.prepared_write``.
"""

from __future__ import annotations

import hashlib
import io
import json
from typing import TYPE_CHECKING, Any

from flanrec.data import layout
from flanrec.data.trie import TrieArrays, build_trie
from flanrec.data.types import ItemMeta, Split, UserFeatures, UserSequence
from flanrec.errors import UserError
from flanrec.files import outputs, storage

if TYPE_CHECKING:
    import seqio

    from flanrec.data.indexing import ItemIndex
    from flanrec.data.trie import TrieArrays

SPLIT_FILE = layout.SPLIT_FILE
PREPARE_FILE = layout.PREPARE_FILE


class PreparedDataError(UserError, ValueError):
    """A prepared directory is missing a file or does not match what prepare recorded."""


# Which examples `flanrec.prepare` writes from the same raw log and options. Bumped when a
# change makes them differ, so a dir prepared before can be told apart: prepare.json's
# `version` is its format, which such a change leaves alone. 1 (unrecorded): before repeated
# seqrec windows were dropped (ML-100K 6,242 train windows; now 6,142).
EXAMPLES_REVISION = 2


def stale_examples_warning(doc: dict[str, Any], data_dir: str) -> str | None:
    """One line when `data_dir` (its prepare.json `doc`) holds examples an older flanrec
    wrote, else None. A warning, not an error: the dir is the user's and still loads; what it
    changes is whether numbers match the ones this version documents."""
    revision = doc.get("examples_revision", 1)
    if isinstance(revision, int) and revision >= EXAMPLES_REVISION:
        return None
    return (f"{data_dir} was prepared by an older flanrec (examples revision {revision}; this "
            f"one writes {EXAMPLES_REVISION}): its train examples differ from what prepare "
            "writes now, so results will not match the documented ones; prepare again into a "
            "new --data_dir (this dir is left as it is)")


def read_prepare_json(data_dir: str) -> dict[str, Any]:
    """``DATA_DIR/prepare.json`` (options, fingerprints, task list) as a dict."""
    path = storage.join(data_dir, PREPARE_FILE)
    if not storage.exists(path):
        raise PreparedDataError(
            f"{path}: not found; is {data_dir!r} a directory written by "
            "`python -m flanrec.prepare --out ...`?")
    outputs.require_complete(data_dir, "prepared data dir")
    return json.loads(storage.read_text(path))


def load_split(data_dir: str) -> Split:
    """The leave-one-out split ``prepare`` used, users in the order it wrote them.

    The file's sha256 is compared with the one in ``prepare.json`` when recorded.
    """
    path = storage.join(data_dir, SPLIT_FILE)
    if not storage.exists(path):
        raise PreparedDataError(f"{path}: not found (prepared data dir expected)")
    outputs.require_complete(data_dir, "prepared data dir")
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
    path = storage.join(data_dir, layout.ITEMS_FILE)
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


def load_catalogue(data_dir: str) -> list[str]:
    """Every item of the prepared dir, in the catalogue order tries and item numbers use."""
    return list(storage.read_json(storage.join(data_dir, SPLIT_FILE))["all_items"])


def index_methods(data_dir: str) -> list[str]:
    """The dir's indexings, primary first (prepare.json ``index_methods``)."""
    return list(storage.read_json(storage.join(data_dir, PREPARE_FILE))["index_methods"])


def load_index(data_dir: str, method: str | None = None) -> ItemIndex:
    """The fitted item index of one indexing (default: the dir's primary one)."""
    from flanrec.data.indexing import ItemIndex

    method = method or index_methods(data_dir)[0]
    return ItemIndex.load(storage.join(data_dir, layout.index_dir(method)))


def load_token_slots(data_dir: str) -> dict[str, int]:
    """token -> vocabulary id of the dir's new ID tokens ({} for numeric and title IDs)."""
    from flanrec.data import vocab as vocab_lib

    return vocab_lib.load_token_slots(data_dir)


def vocabulary_fingerprint(vocabulary: seqio.Vocabulary) -> str:
    """What a stored trie records of the vocabulary its token ids come from (an md5)."""
    from flanrec.data import vocab as vocab_lib

    return vocab_lib.vocabulary_fingerprint(vocabulary)


def trie_file(end_with_eos: bool = True) -> str:
    """File name of an indexing's trie: with EOS (most families) or without (seqrec)."""
    return layout.trie_file(end_with_eos)


def load_trie(path: str) -> tuple[TrieArrays, list[str]]:
    """(TrieArrays, items) of a trie file ``save_trie`` wrote (dense_next is None;
    ``build_trie`` can recompute it)."""
    import numpy as np

    with np.load(io.BytesIO(storage.read_bytes(path))) as z:
        data = {k: z[k] for k in z.files}
    items = [str(x) for x in data.pop("items")]
    data.pop("vocab_id", None)
    scalars = {k: int(data.pop(k)) for k in ("eos_id", "pad_id", "vocab_size", "max_length")}
    if "children_tokens" in data:  # a file storing padded tables, not sparse rows
        return TrieArrays.from_padded(dense_next=None, **data, **scalars), items
    return TrieArrays(dense_next=None, **data, **scalars), items


def item_trie(data_dir: str, vocabulary: seqio.Vocabulary | None = None,
              method: str | None = None, end_with_eos: bool = True,
              ) -> tuple[TrieArrays, list[str]]:
    """(TrieArrays, items) of a prepared dir's item IDs under `vocabulary`.

    Loads `index/{method}/trie.npz` (`trie_noeos.npz` with `end_with_eos=False`) when it was
    built with this very vocabulary, else builds it in memory (about a second for ml-100k): a
    trie in another vocabulary's token ids would constrain decoding to the wrong tokens.
    `vocabulary` defaults to `vocabulary_for_prepared(data_dir)`, `method` to the dir's first
    indexing.
    """
    import numpy as np

    from flanrec.data import vocab as vocab_lib

    method = method or index_methods(data_dir)[0]
    vocabulary = vocabulary or vocab_lib.vocabulary_for_prepared(data_dir)
    path = storage.join(data_dir, layout.trie_path(method, end_with_eos))
    if storage.exists(path):
        with np.load(io.BytesIO(storage.read_bytes(path))) as z:
            stored = str(z["vocab_id"]) if "vocab_id" in z.files else ""
        if stored == vocabulary_fingerprint(vocabulary):
            return load_trie(path)
    index = load_index(data_dir, method)
    catalogue = load_catalogue(data_dir)
    seqs = [vocabulary.encode(index.id_of(item)) for item in catalogue]
    trie = build_trie(seqs, eos_id=vocabulary.eos_id, vocab_size=vocabulary.vocab_size,
                      pad_id=0, dense_limit=0, end_with_eos=end_with_eos)
    return trie, list(catalogue)


def load_users(data_dir: str) -> UserFeatures | None:
    """User attributes (ml-100k: age, gender, occupation) from ``split/users.json``; None for
    a dataset without them (the profile family then has no examples)."""
    path = storage.join(data_dir, layout.USERS_FILE)
    if not storage.exists(path):
        return None
    text = storage.read_text(path)
    expected = _recorded_sha(data_dir, "users.json")
    if expected and hashlib.sha256(text.encode("utf-8")).hexdigest() != expected:
        raise PreparedDataError(f"{path}: sha256 differs from the one recorded in "
                                f"{PREPARE_FILE}; run prepare again")
    doc = json.loads(text)
    feats = doc.get("users") if isinstance(doc, dict) else None
    if not isinstance(feats, dict) or not all(isinstance(v, dict) for v in feats.values()):
        raise PreparedDataError(f"{path}: expected {{\"users\": {{user: {{attribute: value}}}}}}")
    return UserFeatures(features={str(u): {str(k): str(v) for k, v in f.items()}
                                  for u, f in feats.items()})
