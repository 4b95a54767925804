"""The `seqrec` family: many next-item targets per example, SASRec-style.

Its targets are a run of item IDs without EOS (the decoder continues from one item to the
next); inference ranks the last item after feeding the others as a prefix. Uncapped in
mixtures, rated by its train target items (`train_targets`).

What a sequence model cannot read can go into the instruction as language: the encoder
items' titles, years and genres (prepare's ``--seqrec_item_text CHARS``) and the user's
profile (``--seqrec_profile``). Both are off by default (IDs only); data without them keeps
IDs only, with a note at prepare.
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
from flanrec.data.sources._common import fallback_title
from flanrec.data.types import ItemMeta, Split, UserFeatures

SEQREC_WINDOW = 40
SEQREC_ENCODER_ITEMS = 10
SEQREC_TILINGS = 2
SEQREC_ITEM_TEXT = 0  # characters of text per encoder item; 0: IDs only
SEQREC_PROFILE = False

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

# With --seqrec_item_text, {history} lists each encoder item as "ID (title, year; genres)",
# and these templates say so; the targets stay bare IDs, one token each.
SEQREC_TEXT_TEMPLATES: list[tuple[str, str]] = [
    ("User {user} started with these movies (ID, then title, year and genres): {history}. "
     "List the IDs of the movies they watched next, in order.", "{target}"),
    ("Here are the first movies user {user} watched, each with its title, year and genres: "
     "{history}. Continue their viewing history, one movie ID at a time.", "{target}"),
    ("Continue the viewing sequence of user {user}, who began with {history}. Answer with "
     "movie IDs.", "{target}"),
    ("{history}\n\nThese are the earliest films in user {user}'s history, with their "
     "titles, years and genres. Which film IDs follow, in the order watched?", "{target}"),
    ("User {user} watched {history}. Predict the IDs of the movies they watch afterwards, "
     "oldest first.", "{target}"),
    ("Viewing log of user {user} so far (ID, title, year, genres): {history}\nNext movie "
     "IDs:", "{target}"),
    ("After {history}, what did user {user} watch next? List the movie IDs in order.",
     "{target}"),
    ("I am user {user}. I started with {history}. What did I watch after that, in order? "
     "Answer with movie IDs.", "{target}"),
    # unseen
    ("Given the opening of user {user}'s watch history, titles and genres included "
     "({history}), write out the rest of it as movie IDs.", "{target}"),
    ("Which movies, in sequence, did user {user} stream after {history}? Give their IDs.",
     "{target}"),
]
templates.register_templates(
    "seqrec_text", {"history", "target", "user"}, SEQREC_TEXT_TEMPLATES,
    answer_fields=templates.BUILTIN_ANSWER_FIELDS)

# With --seqrec_profile: {profile} is a noun phrase ("a 24-year-old male technician").
SEQREC_PROFILE_TEMPLATES: list[tuple[str, str]] = [
    ("User {user} is {profile} and started with these movies: {history}. List the movies "
     "they watched next, in order.", "{target}"),
    ("Here are the first movies user {user}, {profile}, watched: {history}. Continue their "
     "viewing history, one movie ID at a time.", "{target}"),
    ("Continue the viewing sequence of user {user} ({profile}), who began with {history}.",
     "{target}"),
    ("{history}\n\nThese are the earliest films in the history of user {user}, {profile}. "
     "Which films follow, in the order watched?", "{target}"),
    ("User {user}, {profile}, watched {history}. Predict the movies they watch afterwards, "
     "oldest first.", "{target}"),
    ("Viewer: {profile} (user {user}). Viewing log so far: {history}\nNext movies:",
     "{target}"),
    ("After {history}, what did user {user}, {profile}, watch next? List the movies in "
     "order.", "{target}"),
    ("I am user {user}, {profile}. I started with {history}. What did I watch after that, "
     "in order? Answer with movie IDs.", "{target}"),
    # unseen
    ("Given the opening of the watch history of {profile} (user {user}): {history}, write "
     "out the rest of it.", "{target}"),
    ("Which movies, in sequence, did user {user}, who is {profile}, stream after {history}?",
     "{target}"),
]
templates.register_templates(
    "seqrec_profile", {"history", "profile", "target", "user"}, SEQREC_PROFILE_TEMPLATES,
    answer_fields=templates.BUILTIN_ANSWER_FIELDS)

SEQREC_TEXT_PROFILE_TEMPLATES: list[tuple[str, str]] = [
    ("User {user} is {profile} and started with these movies (ID, then title, year and "
     "genres): {history}. List the IDs of the movies they watched next, in order.",
     "{target}"),
    ("Here are the first movies user {user}, {profile}, watched, each with its title, year "
     "and genres: {history}. Continue their viewing history, one movie ID at a time.",
     "{target}"),
    ("Continue the viewing sequence of user {user} ({profile}), who began with {history}. "
     "Answer with movie IDs.", "{target}"),
    ("{history}\n\nThese are the earliest films, with titles, years and genres, in the "
     "history of user {user}, {profile}. Which film IDs follow, in the order watched?",
     "{target}"),
    ("User {user}, {profile}, watched {history}. Predict the IDs of the movies they watch "
     "afterwards, oldest first.", "{target}"),
    ("Viewer: {profile} (user {user}). Viewing log so far (ID, title, year, genres): "
     "{history}\nNext movie IDs:", "{target}"),
    ("After {history}, what did user {user}, {profile}, watch next? List the movie IDs in "
     "order.", "{target}"),
    ("I am user {user}, {profile}. I started with {history}. What did I watch after that, "
     "in order? Answer with movie IDs.", "{target}"),
    # unseen
    ("Given the opening of the watch history of {profile} (user {user}), titles and genres "
     "included ({history}), write out the rest of it as movie IDs.", "{target}"),
    ("Which movies, in sequence, did user {user}, who is {profile}, stream after {history}? "
     "Give their IDs.", "{target}"),
]
templates.register_templates(
    "seqrec_text_profile", {"history", "profile", "target", "user"},
    SEQREC_TEXT_PROFILE_TEMPLATES, answer_fields=templates.BUILTIN_ANSWER_FIELDS)

TEMPLATE_FAMILIES = ("seqrec", "seqrec_text", "seqrec_profile", "seqrec_text_profile")
"""Template family by (item text, profile): IDs only, + item text, + profile, + both."""


def _template_family(item_text: bool, profile: bool) -> str:
    return TEMPLATE_FAMILIES[int(item_text) + 2 * int(profile)]


def _clean(text: str) -> str:
    """One line, single spaces: prepare renders from the reader's metadata and seqio from
    split/items.tsv (tabs and newlines replaced), and both must give the same text."""
    return " ".join(str(text).split())


def item_text(meta: ItemMeta | None, item: str, max_chars: int, with_title: bool = True
              ) -> str:
    """The text after an item's ID: "Toy Story, 1995; Animation, Children's, Comedy".

    Title (left out when the ID is the title already), year, then categories, in at most
    ``max_chars`` characters: categories are dropped from the last down to the first, then
    the title is cut at a word (ending "..."), so one long title or a dozen genres cannot
    crowd the other items out of the input. "" where the data has nothing for the item
    (the ID then stands alone).
    """
    if meta is None or max_chars <= 0:
        return ""
    title = _clean(meta.title.get(item, "")) if with_title else ""
    if title == fallback_title(item):  # what readers give an item without metadata
        title = ""
    year = _clean(meta.year.get(item, ""))
    cats = [c for raw in meta.categories.get(item, []) for c in
            (_clean(p) for p in str(raw).split("|")) if c and c.lower() != "unknown"]

    def join(t: str, genres: list[str]) -> str:
        head = ", ".join(x for x in (t, year) if x)
        tail = ", ".join(genres)
        return "; ".join(x for x in (head, tail) if x)

    text = join(title, cats)
    while len(text) > max_chars and len(cats) > 1:
        cats.pop()
        text = join(title, cats)
    if len(text) > max_chars and title:
        for keep in ([cats, []] if cats else [[]]):  # a title beside the genre, else alone
            if len(join(title, keep)) <= max_chars:
                text = join(title, keep)
                break
            words = title.split()
            while words and len(join(" ".join(words) + "...", keep)) > max_chars:
                words.pop()
            short = " ".join(words).rstrip(",;:")
            text = join(short + "..." if short else "", keep)
            if short:
                break
    return text[:max_chars].rstrip()


def history_with_text(index: ItemIndex, meta: ItemMeta | None, items: Sequence[str],
                      max_chars: int) -> str:
    """Encoder items as "ID (text)", "; " separated (the texts contain commas)."""
    ids = index.item_to_id
    with_title = index.method != "title"
    out = []
    for i in items:
        iid = ids[i] if i in ids else index.id_of(i)
        text = item_text(meta, i, max_chars, with_title)
        out.append(f"{iid} ({text})" if text else iid)
    return "; ".join(out)


def has_item_text(meta: ItemMeta | None, items: Sequence[str]) -> bool:
    """Whether any of ``items`` has a title, year or category to show."""
    return meta is not None and any(item_text(meta, i, 1 << 30) for i in items)


def describe_user(features: dict[str, str] | None) -> str:
    """A user's profile as a noun phrase: "a 24-year-old male technician", "" without one.

    From the attributes MovieLens has (age in years or as a group, gender, occupation);
    others (a zip code) say little about taste and are left out. The occupation "other"
    says nothing and is dropped; "none" reads "with no occupation".
    """
    if not features:
        return ""
    age = _clean(features.get("age", ""))
    gender = _clean(features.get("gender", "")).lower()
    gender = {"m": "male", "f": "female"}.get(gender, gender)
    occupation = _clean(features.get("occupation", "")).lower()
    words = ["retired"] if occupation == "retired" else []
    if age.isdigit():
        words.append(f"{int(age)}-year-old")
    if gender:
        words.append(gender)
    if occupation not in ("", "other", "none", "retired"):
        words.append(occupation)
    elif not gender:
        words.append("person")
    suffix = (f" aged {age}" if age and not age.isdigit() else "") + (
        " with no occupation" if occupation == "none" else "")
    if words == ["person"] and not suffix:
        return ""
    first = words[0]
    an = first[0] in "aeiou" or first.startswith("8") or first.startswith(("11-", "18-"))
    return f"{'an' if an else 'a'} {' '.join(words)}{suffix}"


def text_notes(item_chars: int, profile: bool, meta: ItemMeta | None,
               users: UserFeatures | None, catalogue: Sequence[str]) -> list[str]:
    """What of --seqrec_item_text / --seqrec_profile the data cannot show (one line each).

    Data without item text (the Amazon 5-core sequences, a CSV log without titles) or
    without user attributes still trains the family, with IDs alone: a note, not a refusal,
    so one command line serves every data set.
    """
    notes = []
    if item_chars > 0 and not has_item_text(meta, catalogue):
        notes.append("--seqrec_item_text: the data has no item titles, years or categories; "
                     "seqrec reads item IDs only")
    if profile and not (users is not None and any(describe_user(f)
                                                  for f in users.features.values())):
        notes.append("--seqrec_profile: the data has no user attributes (age, gender, "
                     "occupation); seqrec reads no profile")
    return notes


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
                    shard_index: int = 0, num_shards: int = 1, task_prefix: str = "",
                    item_text_chars: int = SEQREC_ITEM_TEXT, profile: bool = SEQREC_PROFILE,
                    users: UserFeatures | None = None) -> Iterator[Example]:
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

    Text the IDs cannot carry, as language in the instruction (both off by default, and
    then every example is exactly the IDs-only one): ``item_text_chars > 0`` writes each
    encoder item as "ID (title, year; genres)" in at most that many characters of text
    (:func:`item_text`); ``profile`` adds the user's attributes ("a 24-year-old male
    technician", :func:`describe_user`; needs ``users``). Each combination has its own
    template family (:data:`TEMPLATE_FAMILIES`). Data without item text, or a user without
    attributes, gets the IDs-only phrasing (:func:`text_notes` says so once, at prepare).
    The decoder's items (targets and the evaluation prefix) stay bare IDs: one token each.
    """
    check_split_name(split_name)
    family = "seqrec"
    ids = index.item_to_id
    with_text = item_text_chars > 0 and has_item_text(meta, split.all_items)
    profiles = ({u: p for u, f in users.features.items() if (p := describe_user(f))}
                if profile and users is not None else {})
    pools = {t: template_pool(t, template_types, template_idx) for t in
             {_template_family(with_text, False), _template_family(with_text, bool(profiles))}}

    def render(key: str, user: str, enc: Sequence[str], dec: Sequence[str],
               target_item: str) -> Example:
        tfam = _template_family(with_text, user in profiles)
        idx = choose_template(seed, tfam, split_name, key, pools[tfam])
        history = (history_with_text(index, meta, enc, item_text_chars) if with_text
                   else item_list(index, enc))
        fields = {"user": user, "history": history,
                  "target": " ".join(ids[i] if i in ids else index.id_of(i) for i in dec)}
        if user in profiles:
            fields["profile"] = profiles[user]
        return render_example(tfam, task_prefix + family, idx, fields, key, user=user,
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


def _text_options(data: FamilyData) -> tuple[int, bool]:
    """(characters of item text, profile) prepare recorded; a dir prepared before these
    options existed has neither, and reads IDs only."""
    return (int(option(data, "seqrec_item_text", SEQREC_ITEM_TEXT)),
            bool(option(data, "seqrec_profile", SEQREC_PROFILE)))


def examples(data: FamilyData, split_name: str, template_types: Sequence[str] = ("seen",),
             shard_index: int = 0, num_shards: int = 1) -> Iterator[Example]:
    chars, profile = _text_options(data)
    return seqrec_examples(data.split, data.index, data.meta,
                           max_history=data.options.get("max_history"), **_shape(data),
                           item_text_chars=chars, profile=profile, users=data.users,
                           **builder_kwargs(data, split_name, template_types, shard_index,
                                            num_shards))


def notes(data: FamilyData) -> list[str]:
    """The text options the data cannot honour (prepare prints them once)."""
    chars, profile = _text_options(data)
    return text_notes(chars, profile, data.meta, data.users, data.split.all_items)


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
                         template_families=TEMPLATE_FAMILIES, targets_eos=False,
                         target_layout="item_sequence", mixture_cap=None,
                         train_targets=train_targets, notes=notes, order=20))
