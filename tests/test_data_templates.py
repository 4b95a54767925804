"""Instruction templates: enough of them, well-formed, held-out ones flagged."""

from __future__ import annotations

import pytest

from flanrec.data import families, templates  # noqa: F401 (families registers the templates)


def test_patterns_are_well_formed():
    templates.check_patterns()  # raises on any problem
    assert set(templates.PATTERNS) == set(templates.FIELDS)
    for family in ("seq", "direct", "rating", "binary", "id2title", "title2id", "id2genres",
                   "profile_attr", "profile_rec"):
        seen = templates.template_indices(family, ("seen",))
        unseen = templates.template_indices(family, ("unseen",))
        assert len(seen) >= 8 and len(unseen) == 2
        assert not set(seen) & set(unseen)
        assert sorted(seen + unseen) == templates.template_indices(family, ("seen", "unseen"))
        assert all(templates.template_type(family, i) == "unseen" for i in unseen)


def test_check_patterns_catches_mistakes(monkeypatch):
    bad = dict(templates.PATTERNS)
    bad["seq"] = list(bad["seq"])
    bad["seq"][0] = ("User {user} watched {history}; next is {target}?", "{target}")
    monkeypatch.setattr(templates, "PATTERNS", bad)
    with pytest.raises(ValueError, match=r"seq\[0\] puts the answer \['target'\] in inputs"):
        templates.check_patterns()
    bad["seq"][0] = ("User {usr} watched {history}.", "{target}")
    with pytest.raises(ValueError, match="unknown fields"):
        templates.check_patterns()


def test_render_fills_fields_and_names_missing_ones():
    inputs, targets = templates.render("rating", 0, user="7", item="<c1><c2>", title="Heat",
                                       history="", rating="4")
    assert inputs == "How many stars (1 to 5) would user 7 give the movie <c1><c2>?"
    assert targets == "4"
    with pytest.raises(KeyError, match=r"rating\[1\] needs field 'title'"):
        templates.render("rating", 1, user="7", item="x", rating="4")


def test_bad_requests():
    with pytest.raises(KeyError, match="unknown template family"):
        templates.template_indices("poetry")
    with pytest.raises(ValueError, match="template_types"):
        templates.template_indices("seq", ("held-out",))
    with pytest.raises(IndexError):
        templates.template_type("seq", 10)
