"""The `profile` family: user attributes from the history, and profile-aware next items.

Two template families: `profile_attr` (predict gender, age group or occupation; train only)
and `profile_rec` (next-item prediction with the user's profile in the prompt).
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
    register,
)
from flanrec.data.indexing import ItemIndex
from flanrec.data.types import ItemMeta, Split, UserFeatures, UserSequence

AGE_GROUPS = ((17, "under 18"), (24, "18-24"), (34, "25-34"), (44, "35-44"), (49, "45-49"),
              (55, "50-55"), (10**9, "56 or older"))
GENDERS = {"M": "male", "F": "female"}
PROFILE_ATTRIBUTES = ("gender", "age", "occupation")
ATTRIBUTE_NAMES = {"gender": "gender", "age": "age group", "occupation": "occupation"}
def age_group(age: str) -> str:
    """ml-100k gives ages in years; ml-1m already gives a group ("18-24"): keep those."""
    try:
        years = int(age)
    except ValueError:
        return age.strip()
    return next(name for upper, name in AGE_GROUPS if years <= upper)

PROFILE_ATTR_TEMPLATES: list[tuple[str, str]] = [
    ("User {user} has watched {history}. What is the user's {attribute}? Options: "
     "{options}", "{answer}"),
    ("Guess the {attribute} of user {user} from their movies: {history}. Choose from "
     "{options}.", "{answer}"),
    ("Movies watched by user {user}: {history}\nWhich {attribute} fits this viewer "
     "best? ({options})", "{answer}"),
    ("Based on the viewing history {history}, predict the {attribute} of user {user}. "
     "Possible answers: {options}", "{answer}"),
    ("What {attribute} would you expect of someone who watched {history}? Pick one of "
     "{options}.", "{answer}"),
    ("Infer user {user}'s {attribute} ({options}) from what they watched: {history}.",
     "{answer}"),
    ("Here is the history of user {user}: {history}. Among {options}, which is their "
     "{attribute}?", "{answer}"),
    ("Viewer {user} watched {history}. Their {attribute} is most likely one of "
     "{options}. Which?", "{answer}"),
    # unseen
    ("From the films {history}, tell me the {attribute} of the person who watched "
     "them (one of {options}).", "{answer}"),
    ("Profile question about user {user}, who has seen {history}: what is their "
     "{attribute}? Options: {options}", "{answer}"),
]
templates.register_templates(
    "profile_attr", {"answer", "attribute", "history", "options", "user"}, PROFILE_ATTR_TEMPLATES,
    answer_fields=templates.BUILTIN_ANSWER_FIELDS)


PROFILE_REC_TEMPLATES: list[tuple[str, str]] = [
    ("User {user} is {profile} and has watched {history}. What will they watch next?",
     "{target}"),
    ("Recommend the next movie for {profile} (user {user}) who watched {history}.",
     "{target}"),
    ("Profile: {profile}. History: {history}. Next movie for user {user}:", "{target}"),
    ("Which movie should user {user}, {profile}, watch after {history}?", "{target}"),
    ("User {user} ({profile}) watched these movies in order: {history}. Predict the "
     "next one.", "{target}"),
    ("Suggest a movie for {profile} whose viewing history is {history}.", "{target}"),
    ("Knowing that user {user} is {profile}, and that they watched {history}, what "
     "comes next?", "{target}"),
    ("About user {user}: {profile}. Recently watched: {history}. Recommend one movie.",
     "{target}"),
    # unseen
    ("Pick the next film for a viewer who is {profile} and has seen {history}.",
     "{target}"),
    ("User {user} can be described as {profile}. After {history}, which movie will "
     "they choose?", "{target}"),
]
templates.register_templates(
    "profile_rec", {"history", "profile", "target", "user"}, PROFILE_REC_TEMPLATES,
    answer_fields=templates.BUILTIN_ANSWER_FIELDS)


def profile_values(features: dict[str, str]) -> dict[str, str]:
    """The predictable attributes of one user, normalised to the words templates use."""
    out = {}
    if features.get("gender", "").strip():
        g = features["gender"].strip()
        out["gender"] = GENDERS.get(g.upper(), g.lower())
    if features.get("age", "").strip():
        out["age"] = age_group(features["age"])
    if features.get("occupation", "").strip():
        out["occupation"] = features["occupation"].strip()
    return out


def describe_profile(values: dict[str, str]) -> str:
    """E.g. "a male user aged 25-34 who works as (a) technician"."""
    parts = ["a"]
    if "gender" in values:
        parts.append(values["gender"])
    parts.append("user")
    if "age" in values:
        parts.append(f"aged {values['age']}")
    if "occupation" in values:
        parts.append(f"whose occupation is {values['occupation']}")
    return " ".join(parts)


def profile_attr_examples(split: Split, index: ItemIndex, users: UserFeatures,
                          meta: ItemMeta | None = None, split_name: str = "train",
                          seed: int = 0, template_types: Sequence[str] = ("seen",),
                          template_idx: int | None = None,
                          attributes: Sequence[str] = PROFILE_ATTRIBUTES,
                          max_history: int | None = None, shard_index: int = 0,
                          num_shards: int = 1, task_prefix: str = "") -> Iterator[Example]:
    """Predict a user attribute (gender, age group, occupation) from the training history,
    with the attribute's observed values as options. Training only: one example per
    (user, attribute), so there is nothing to hold out."""
    check_split_name(split_name, ("train",))
    family = "profile_attr"
    if users is None:
        raise ValueError(f"{family} examples need UserFeatures (users=)")
    pool = template_pool(family, template_types, template_idx)
    cap = split.max_history if max_history is None else max_history
    values = {u: profile_values(f) for u, f in users.features.items()}
    options = {a: sorted({v[a] for v in values.values() if a in v}) for a in attributes}
    for s, a in shard(_profile_attr_specs(split, values, attributes), shard_index, num_shards):
        key = f"{s.user}:{a}"
        idx = choose_template(seed, family, split_name, key, pool)
        fields = {"user": s.user, "history": item_list(index, s.train_items[-cap:]),
                  "attribute": ATTRIBUTE_NAMES.get(a, a), "options": ", ".join(options[a]),
                  "answer": values[s.user][a]}
        yield render_example(family, task_prefix + family, idx, fields, key, user=s.user,
                             target_item="")


def _profile_attr_specs(split: Split, values: dict[str, dict[str, str]],
                        attributes: Sequence[str]) -> Iterator[tuple[UserSequence, str]]:
    """(user sequence, attribute) of every profile_attr example."""
    for s in split.users:
        for a in attributes:
            if a in values.get(s.user, {}) and s.train_items:
                yield s, a


def profile_rec_examples(split: Split, index: ItemIndex, users: UserFeatures,
                         meta: ItemMeta | None = None, split_name: str = "train",
                         seed: int = 0, template_types: Sequence[str] = ("seen",),
                         template_idx: int | None = None, max_history: int | None = None,
                         shard_index: int = 0, num_shards: int = 1, task_prefix: str = ""
                         ) -> Iterator[Example]:
    """Next-item prediction with the user's profile in the prompt (same queries as seq);
    users without profile features are skipped."""
    check_split_name(split_name)
    family = "profile_rec"
    if users is None:
        raise ValueError(f"{family} examples need UserFeatures (users=)")
    pool = template_pool(family, template_types, template_idx)
    profiles = {u: describe_profile(profile_values(f)) for u, f in users.features.items()
                if profile_values(f)}
    mine = (q for q in queries(split, split_name, max_history) if q[1] in profiles)
    for key, user, history, target in shard(mine, shard_index, num_shards):
        idx = choose_template(seed, family, split_name, key, pool)
        fields = {"user": user, "profile": profiles[user], "history": item_list(index, history),
                  "target": index.id_of(target)}
        yield render_example(family, task_prefix + family, idx, fields, key, user=user,
                      target_item=target)


def profile_examples(split: Split, index: ItemIndex, users: UserFeatures,
                     meta: ItemMeta | None = None, split_name: str = "train", seed: int = 0,
                     template_types: Sequence[str] = ("seen",), shard_index: int = 0,
                     num_shards: int = 1, task_prefix: str = "") -> Iterator[Example]:
    """Both profile families (attributes on train only, then profile-aware recommendation)."""
    def all_examples() -> Iterator[Example]:
        if split_name == "train":
            yield from profile_attr_examples(split, index, users, meta, split_name, seed,
                                             template_types, task_prefix=task_prefix)
        yield from profile_rec_examples(split, index, users, meta, split_name, seed,
                                        template_types, task_prefix=task_prefix)
    return shard(all_examples(), shard_index, num_shards)


def examples(data: FamilyData, split_name: str, template_types: Sequence[str] = ("seen",),
             shard_index: int = 0, num_shards: int = 1) -> Iterator[Example]:
    if data.users is None:
        raise ValueError("profile examples need UserFeatures (users=)")
    return profile_examples(data.split, data.index, data.users, data.meta,
                            **builder_kwargs(data, split_name, template_types, shard_index,
                                             num_shards))


def count(data: FamilyData, split_name: str) -> int:
    """Counted from the (user, attribute) specs and the queries, none rendered."""
    check_split_name(split_name)
    if data.users is None:
        return 0
    values = {u: profile_values(f) for u, f in data.users.features.items()}
    n = 0
    if split_name == "train":
        n += sum(1 for _ in _profile_attr_specs(data.split, values, PROFILE_ATTRIBUTES))
    return n + sum(1 for q in queries(data.split, split_name, None) if values.get(q[1]))


def needs_users(data: FamilyData) -> str | None:
    if data.users is None or not data.users.features:
        return "the dataset has no user features (age, gender, occupation)"
    return None


FAMILY = register(Family(name="profile", target_kind="text", examples=examples, count=count,
                         template_families=("profile_attr", "profile_rec"), indexed=False,
                         unavailable=needs_users, order=70))
