"""Instruction templates as data, FLAN-style: ``PATTERNS[family] = [(inputs, targets), ...]``.

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

NUM_UNSEEN = 2
TEMPLATE_TYPES = ("seen", "unseen")

FIELDS: dict[str, frozenset[str]] = {
    "seq": frozenset({"user", "history", "target", "last_item", "last_title"}),
    "seqrec": frozenset({"user", "history", "target"}),
    "direct": frozenset({"user", "history", "candidates", "target", "num_candidates"}),
    "rating": frozenset({"user", "item", "title", "history", "rating"}),
    "binary": frozenset({"user", "item", "title", "history", "answer"}),
    "id2title": frozenset({"item", "title"}),
    "title2id": frozenset({"item", "title"}),
    "id2genres": frozenset({"item", "title", "genres"}),
    "profile_attr": frozenset({"user", "history", "attribute", "options", "answer"}),
    "profile_rec": frozenset({"user", "profile", "history", "target"}),
}

PATTERNS: dict[str, list[tuple[str, str]]] = {
    "seq": [
        ("Here is the viewing history of user {user}: {history}. What will the user watch "
         "next?", "{target}"),
        ("User {user} has watched these movies in this order: {history}. Predict the next "
         "movie they will watch.", "{target}"),
        ("Given the sequence of movies {history}, watched by user {user}, which movie comes "
         "next?", "{target}"),
        ("{history}\n\nThese are the films user {user} saw, oldest first. Recommend the one "
         "film they are most likely to watch next.", "{target}"),
        ("The most recent movie user {user} watched was {last_item} ({last_title}). Their "
         "full history is {history}. What should they watch next?", "{target}"),
        ("Viewing log for user {user}: {history}\nNext movie:", "{target}"),
        ("Based on what user {user} watched before ({history}), guess the movie they "
         "picked next.", "{target}"),
        ("I am user {user}. Lately I have been watching {history}. What should I watch "
         "next? Answer with the movie ID.", "{target}"),
        # unseen
        ("Predict which title user {user} will stream after finishing {history}.",
         "{target}"),
        ("Movies seen so far by user {user}, in chronological order: {history}. Name the "
         "movie that follows in this sequence.", "{target}"),
    ],
    # The decoder continues the history item by item ({target}: the next items, space
    # separated, no EOS), so the instruction asks for the movies that follow, in order.
    "seqrec": [
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
    ],
    "direct": [
        ("User {user} has watched {history}. Which of the following movies should we "
         "recommend to them? Options: {candidates}", "{target}"),
        ("Pick the one movie from {candidates} that user {user} is most likely to watch, "
         "given their history: {history}.", "{target}"),
        ("Candidates: {candidates}\nHistory of user {user}: {history}\nWhich candidate will "
         "the user choose?", "{target}"),
        ("From these {num_candidates} movies: {candidates}, choose the best recommendation "
         "for user {user}, who has seen {history}.", "{target}"),
        ("User {user} watched {history}. Exactly one of {candidates} is the movie they "
         "watched next. Which one?", "{target}"),
        ("Choose a movie for user {user} from the list {candidates}. Their past movies: "
         "{history}.", "{target}"),
        ("Which of these movies would user {user} enjoy next: {candidates}? For reference, "
         "they have already seen {history}.", "{target}"),
        ("Recommend one item out of {candidates} to user {user}. Previously watched: "
         "{history}.", "{target}"),
        # unseen
        ("A viewer (user {user}) with the history {history} is browsing {candidates}. "
         "Which will they click?", "{target}"),
        ("Select from {candidates} the next movie for user {user} (seen before: "
         "{history}).", "{target}"),
    ],
    "rating": [
        ("How many stars (1 to 5) would user {user} give the movie {item}?", "{rating}"),
        ("Predict user {user}'s rating of {item} ({title}) on a scale from 1 to 5.",
         "{rating}"),
        ("User {user} recently watched {history}. What rating, from 1 to 5, will they give "
         "{item}?", "{rating}"),
        ("On a 1-5 scale, how would user {user} rate \"{title}\" (movie {item})?",
         "{rating}"),
        ("Guess the star rating user {user} gave to movie {item}.", "{rating}"),
        ("User {user} has just finished {title} ({item}). How many stars out of 5 did they "
         "give it?", "{rating}"),
        ("Rate movie {item} as user {user} would, with a whole number between 1 and 5.",
         "{rating}"),
        ("What score from 1 (hated it) to 5 (loved it) did user {user} give {item}?",
         "{rating}"),
        # unseen
        ("Estimate the 1-5 rating that user {user}, who also watched {history}, assigns "
         "to {item}.", "{rating}"),
        ("User {user} reviewed \"{title}\" ({item}). Predict the number of stars.",
         "{rating}"),
    ],
    "binary": [
        ("Will user {user} like the movie {item}? Answer yes or no.", "{answer}"),
        ("User {user} has watched {history}. Would they enjoy {item} ({title})? yes or no",
         "{answer}"),
        ("Does user {user} like {title} (movie {item})? Reply with yes or no.", "{answer}"),
        ("Is movie {item} a good recommendation for user {user}? yes/no", "{answer}"),
        ("Predict whether user {user} gives {item} four stars or more. Answer yes or no.",
         "{answer}"),
        ("User {user} is about to watch \"{title}\". Will they like it? Answer yes or no.",
         "{answer}"),
        ("Would user {user} rate {item} highly? Say yes or no.", "{answer}"),
        ("Given that user {user} watched {history}, will they like {item}? yes or no",
         "{answer}"),
        # unseen
        ("Answer with yes or no: did user {user} enjoy watching {title} ({item})?",
         "{answer}"),
        ("Is user {user} going to be a fan of movie {item}? Respond yes or no.",
         "{answer}"),
    ],
    "id2title": [
        ("What is the title of movie {item}?", "{title}"),
        ("Which film has the ID {item}?", "{title}"),
        ("Movie {item} is called", "{title}"),
        ("Give the name of the movie with identifier {item}.", "{title}"),
        ("{item} is the ID of which movie?", "{title}"),
        ("Tell me the title of item {item}.", "{title}"),
        ("Item {item}: what film is this?", "{title}"),
        ("Look up movie {item} and return its title.", "{title}"),
        # unseen
        ("Translate the movie ID {item} into the movie's title.", "{title}"),
        ("Name the film catalogued as {item}.", "{title}"),
    ],
    "title2id": [
        ("What is the ID of the movie \"{title}\"?", "{item}"),
        ("Which item ID does {title} have?", "{item}"),
        ("Give the identifier of the film {title}.", "{item}"),
        ("The movie {title} has the ID", "{item}"),
        ("Find the movie ID for: {title}", "{item}"),
        ("Return the catalogue ID of \"{title}\".", "{item}"),
        ("Title: {title}\nID:", "{item}"),
        ("How is the movie {title} referred to by ID?", "{item}"),
        # unseen
        ("Convert the title \"{title}\" into its movie ID.", "{item}"),
        ("Which ID would you use to recommend {title}?", "{item}"),
    ],
    "id2genres": [
        ("What genres does movie {item} belong to?", "{genres}"),
        ("List the genres of {item}.", "{genres}"),
        ("Movie {item} ({title}) is which kind of film? Give its genres.", "{genres}"),
        ("Which genres describe the film with ID {item}?", "{genres}"),
        ("Genres of movie {item}:", "{genres}"),
        ("Tell me the genres of item {item}.", "{genres}"),
        ("Classify movie {item} by genre.", "{genres}"),
        ("What type of movie is {item}?", "{genres}"),
        # unseen
        ("Name every genre that applies to movie {item}.", "{genres}"),
        ("In which genres would a video store shelve {item}?", "{genres}"),
    ],
    "profile_attr": [
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
    ],
    "profile_rec": [
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
    ],
}


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


def check_patterns() -> None:
    """Every family: >= 8 seen + NUM_UNSEEN unseen, known fields only, no duplicate wording,
    and the target mentioned only in the targets template (no answer in the question)."""
    answer_fields = {"target", "rating", "answer", "genres"}
    for family, patterns in PATTERNS.items():
        if family not in FIELDS:
            raise ValueError(f"{family}: no FIELDS entry")
        if len(patterns) - NUM_UNSEEN < 8:
            raise ValueError(f"{family}: {len(patterns) - NUM_UNSEEN} seen templates, want >= 8")
        if len(set(patterns)) != len(patterns):
            raise ValueError(f"{family}: duplicate templates")
        for idx, (inputs, targets) in enumerate(patterns):
            used = template_fields(inputs) | template_fields(targets)
            unknown = used - FIELDS[family]
            if unknown:
                raise ValueError(f"{family}[{idx}] uses unknown fields {sorted(unknown)}")
            leaked = template_fields(inputs) & answer_fields
            if family == "title2id":
                leaked |= template_fields(inputs) & {"item"}
            if family in ("id2title",):
                leaked |= template_fields(inputs) & {"title"}
            if leaked:
                raise ValueError(f"{family}[{idx}] puts the answer {sorted(leaked)} in inputs")
            if not template_fields(targets):
                raise ValueError(f"{family}[{idx}] has a constant target")


def register_templates(family: str, fields: set[str] | frozenset[str],
                       patterns: list[tuple[str, str]], answer_fields: set[str] | None = None,
                       replace: bool = False) -> None:
    """Add the templates of a new (user-defined) template family.

    The same rules as the built-ins, scaled to one family: at least one seen template plus
    the ``NUM_UNSEEN`` held-out ones (the last patterns), known fields only, no duplicates,
    a non-constant target, and no answer field (``answer_fields``, default the target-like
    ``{"target", "answer", "rating"}``) in the inputs.
    """
    if family in PATTERNS and not replace:
        raise ValueError(f"templates {family!r} exist already (replace=True replaces them)")
    if len(patterns) < NUM_UNSEEN + 1:
        raise ValueError(f"templates {family!r}: need >= {NUM_UNSEEN + 1} patterns (the last "
                         f"{NUM_UNSEEN} are held out as unseen), got {len(patterns)}")
    if len(set(patterns)) != len(patterns):
        raise ValueError(f"templates {family!r}: duplicate patterns")
    answers = {"target", "answer", "rating"} if answer_fields is None else set(answer_fields)
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
