"""Instruction templates as data, FLAN-style: ``PATTERNS[family] = [(inputs, targets), ...]``.

Each family's module (`flanrec.data.families.*`, or a user's module) registers its own
template families with `register_templates`; this module holds the table and the rules.
Many phrasings of one task teach the model the task rather than one wording; held-out
phrasings measure whether that worked (FLAN's "unseen templates"). In every family the
last ``NUM_UNSEEN`` patterns are held out: training uses only ``seen`` ones unless asked.

Templates are ``str.format`` strings. The fields each family may use are listed in
``FIELDS``; ``check_patterns()`` verifies every template against it (and runs in the tests).
Item fields (``{item}``, ``{target}``, ``{history}``, ``{candidates}``) are ID strings from
the fitted ``ItemIndex``; ``{title}``/``{last_title}`` are catalogue titles.
"""

from __future__ import annotations

import string
from collections.abc import Sequence

NUM_UNSEEN = 2
TEMPLATE_TYPES = ("seen", "unseen")

FIELDS: dict[str, frozenset[str]] = {}
"""Template family -> the fields its templates may use (filled by `register_templates`)."""
PATTERNS: dict[str, list[tuple[str, str]]] = {}
"""Template family -> its (inputs, targets) patterns, the held-out ones last."""
ANSWER_FIELDS: dict[str, frozenset[str]] = {}
"""Template family -> the fields that hold its answer (never in the inputs)."""
DEFAULT_ANSWER_FIELDS = frozenset({"target", "answer", "rating"})
BUILTIN_ANSWER_FIELDS = frozenset({"target", "rating", "answer", "genres"})


def template_type(family: str, idx: int) -> str:
    """'seen' or 'unseen' (held out) for pattern ``idx`` of ``family``."""
    n = len(PATTERNS[family])
    if not 0 <= idx < n:
        raise IndexError(f"{family} has {n} templates, no index {idx}")
    return "unseen" if idx >= n - NUM_UNSEEN else "seen"


def template_indices(family: str, template_types: tuple[str, ...] | list[str] = ("seen",)
                     ) -> list[int]:
    """Indices of ``family``'s templates whose type is in ``template_types``."""
    if family not in PATTERNS:
        raise KeyError(f"unknown template family {family!r}; known: {sorted(PATTERNS)}")
    bad = set(template_types) - set(TEMPLATE_TYPES)
    if bad or not template_types:
        raise ValueError(f"template_types must be a non-empty subset of {TEMPLATE_TYPES}, "
                         f"got {template_types}")
    return [i for i in range(len(PATTERNS[family]))
            if template_type(family, i) in template_types]


def render(family: str, idx: int, **fields: str) -> tuple[str, str]:
    """Fill pattern ``idx`` of ``family``; a KeyError names the missing field."""
    inputs, targets = PATTERNS[family][idx]
    try:
        return inputs.format(**fields), targets.format(**fields)
    except KeyError as e:
        raise KeyError(f"template {family}[{idx}] needs field {e.args[0]!r}") from None


def template_fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


def check_patterns(families: Sequence[str] | None = None) -> None:
    """Every template family (or those named): >= 8 seen + NUM_UNSEEN unseen, known fields
    only, no duplicate wording, and its answer only in the targets template (no answer in
    the question): the bar a built-in family's templates meet. Name the families to hold to
    it when a user's family (registered in the same process, e.g. the README's four-template
    `next_genre`) need not meet it."""
    for family, patterns in PATTERNS.items():
        if families is not None and family not in families:
            continue
        if family not in FIELDS:
            raise ValueError(f"{family}: no FIELDS entry")
        if len(patterns) - NUM_UNSEEN < 8:
            raise ValueError(f"{family}: {len(patterns) - NUM_UNSEEN} seen templates, want >= 8")
        if len(set(patterns)) != len(patterns):
            raise ValueError(f"{family}: duplicate templates")
        answers = ANSWER_FIELDS.get(family, BUILTIN_ANSWER_FIELDS)
        for idx, (inputs, targets) in enumerate(patterns):
            used = template_fields(inputs) | template_fields(targets)
            unknown = used - FIELDS[family]
            if unknown:
                raise ValueError(f"{family}[{idx}] uses unknown fields {sorted(unknown)}")
            leaked = template_fields(inputs) & answers
            if leaked:
                raise ValueError(f"{family}[{idx}] puts the answer {sorted(leaked)} in inputs")
            if not template_fields(targets):
                raise ValueError(f"{family}[{idx}] has a constant target")


def register_templates(family: str, fields: set[str] | frozenset[str],
                       patterns: list[tuple[str, str]], answer_fields: set[str] | None = None,
                       replace: bool = False) -> None:
    """Add the templates of a template family (every family's module calls this).

    The rules, scaled to one family: at least one seen template plus the ``NUM_UNSEEN``
    held-out ones (the last patterns), known fields only, no duplicates, a non-constant
    target, and no answer field (``answer_fields``, default the target-like
    ``{"target", "answer", "rating"}``) in the inputs. `check_patterns` holds the built-ins
    to a higher bar (>= 8 seen templates).
    """
    if family in PATTERNS and not replace:
        raise ValueError(f"templates {family!r} exist already (replace=True replaces them)")
    if len(patterns) < NUM_UNSEEN + 1:
        raise ValueError(f"templates {family!r}: need >= {NUM_UNSEEN + 1} patterns (the last "
                         f"{NUM_UNSEEN} are held out as unseen), got {len(patterns)}")
    if len(set(patterns)) != len(patterns):
        raise ValueError(f"templates {family!r}: duplicate patterns")
    answers = DEFAULT_ANSWER_FIELDS if answer_fields is None else frozenset(answer_fields)
    for idx, (inputs, targets) in enumerate(patterns):
        unknown = (template_fields(inputs) | template_fields(targets)) - set(fields)
        if unknown:
            raise ValueError(f"templates {family}[{idx}] use unknown fields {sorted(unknown)} "
                             f"(declared: {sorted(fields)})")
        if template_fields(inputs) & answers:
            raise ValueError(f"templates {family}[{idx}] put the answer "
                             f"{sorted(template_fields(inputs) & answers)} in the inputs")
        if not template_fields(targets):
            raise ValueError(f"templates {family}[{idx}] have a constant target")
    FIELDS[family] = frozenset(fields)
    PATTERNS[family] = list(patterns)
    ANSWER_FIELDS[family] = answers
