"""One route for every family, one module per name of the prepared dir and data dir.

The built-in families are the modules of `flanrec.data.families`, found on disk; no module
elsewhere dispatches on a family's name; `"prepare.json"` is spelled in one module and
`$FLANREC_DATA_DIR` is read in one module. The source checks walk the syntax tree (string
constants that are not docstrings, calls that read the environment), so comments and
docstrings that mention the names do not count.
"""

from __future__ import annotations

import ast
import sys
import textwrap
from pathlib import Path

import pytest

from flanrec.data import families, templates

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "flanrec" / "data" / "families"


def _sources() -> dict[str, ast.Module]:
    out = {}
    for root in ("flanrec", "tasks"):
        for path in sorted((REPO / root).rglob("*.py")):
            out[str(path.relative_to(REPO))] = ast.parse(path.read_text(), str(path))
    return out


def _docstrings(tree: ast.Module) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def strings_containing(tree: ast.Module, text: str) -> list[int]:
    """Lines of the string constants (f-string parts included, docstrings not) with `text`."""
    skip = _docstrings(tree)
    return [node.lineno for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and text in node.value and id(node) not in skip]


def environment_reads(tree: ast.Module, variable: str) -> list[int]:
    """Lines that read `variable` from the environment: `environ.get(X)`, `environ[X]`,
    `getenv(X)`, with X the literal, `locations.DATA_DIR_ENV`, or a name the module binds
    to either (an assignment or an import of DATA_DIR_ENV from flanrec.data.locations)."""
    def is_locations_constant(node: ast.expr) -> bool:
        return (isinstance(node, ast.Attribute) and node.attr == "DATA_DIR_ENV"
                and isinstance(node.value, ast.Name) and node.value.id == "locations")

    aliases = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and (
                (isinstance(node.value, ast.Constant) and node.value.value == variable)
                or is_locations_constant(node.value)):
            aliases |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.ImportFrom) and node.module == "flanrec.data.locations":
            aliases |= {a.asname or a.name for a in node.names if a.name == "DATA_DIR_ENV"}

    def names_it(arg: ast.expr) -> bool:
        if isinstance(arg, ast.Constant):
            return arg.value == variable
        return is_locations_constant(arg) or (isinstance(arg, ast.Name) and arg.id in aliases)

    def is_environ(node: ast.expr) -> bool:
        return (isinstance(node, ast.Name) and node.id == "environ") or (
            isinstance(node, ast.Attribute) and node.attr == "environ")

    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args and names_it(node.args[0]):
            f = node.func
            if isinstance(f, ast.Attribute) and (
                    (f.attr == "get" and is_environ(f.value)) or f.attr == "getenv"):
                lines.append(node.lineno)
            elif isinstance(f, ast.Name) and f.id == "getenv":
                lines.append(node.lineno)
        elif isinstance(node, ast.Subscript) and is_environ(node.value) and names_it(
                node.slice):
            lines.append(node.lineno)
    return sorted(lines)


def family_name_comparisons(tree: ast.Module, names: set[str]) -> list[int]:
    """Lines comparing something called `family`/`name`/`*_family` to a family name."""
    def literal_names(node: ast.expr) -> set[str]:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return {node.value}
        if isinstance(node, ast.Tuple | ast.List | ast.Set):
            return set().union(*(literal_names(e) for e in node.elts)) if node.elts else set()
        return set()

    def about_family(node: ast.expr) -> bool:
        name = node.id if isinstance(node, ast.Name) else getattr(node, "attr", "")
        return name in ("family", "name") or name.endswith("family")

    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and about_family(node.left) and any(
                literal_names(c) & names for c in node.comparators):
            lines.append(node.lineno)
    return sorted(lines)


def test_the_detectors_find_what_they_look_for():
    """The source checks below would fail on the patterns they forbid."""
    tree = ast.parse(textwrap.dedent('''
        """prepare.json in a docstring is fine."""
        DATA_DIR_ENV = "FLANREC_DATA_DIR"; OTHER_ENV = "FLANREC_AMAZON_DATA_DIR"
        a = os.environ.get("FLANREC_DATA_DIR") or os.environ.get(OTHER_ENV)
        b = os.environ[DATA_DIR_ENV]
        c = os.getenv(locations.DATA_DIR_ENV)
        d = dict(os.environ, FLANREC_DATA_DIR="x")  # a child's environment: not a read
        e = f"{x}/prepare.json: missing"
        if family in ("seq", "seqrec"):
            pass
        if fam.name == "direct":
            pass
        if target_kind == "rating":  # a target kind, not a family
            pass
    '''))
    assert environment_reads(tree, "FLANREC_DATA_DIR") == [4, 5, 6]
    assert strings_containing(tree, "prepare.json") == [8]
    assert family_name_comparisons(tree, {"seq", "seqrec", "direct", "rating"}) == [9, 11]


def test_prepare_json_is_spelled_in_one_module():
    where = {path: lines for path, tree in _sources().items()
             if (lines := strings_containing(tree, "prepare.json"))}
    assert list(where) == ["flanrec/data/layout.py"], where


def test_data_dir_variable_is_read_in_one_module():
    where = {path: lines for path, tree in _sources().items()
             if (lines := environment_reads(tree, "FLANREC_DATA_DIR"))}
    assert list(where) == ["flanrec/data/locations.py"], where


def test_no_module_outside_the_families_dispatches_on_a_family_name():
    builtin = set(families.BUILTIN_FAMILIES)
    where = {path: lines for path, tree in _sources().items()
             if not path.startswith("flanrec/data/families/")
             and (lines := family_name_comparisons(tree, builtin))}
    assert where == {}, where


def test_every_module_of_the_package_is_one_builtin_family():
    modules = sorted(p.stem for p in PACKAGE.glob("*.py")
                     if p.stem != "core" and not p.stem.startswith("_"))
    by_module = {}
    for name in families.BUILTIN_FAMILIES:
        family = families.get(name)
        by_module[family.examples.__module__.rsplit(".", 1)[1]] = family
    assert sorted(by_module) == modules
    # Each module registers its family under its own name, with its templates beside it.
    assert {m: f.name for m, f in by_module.items()} == {m: m for m in modules}
    for family in by_module.values():
        assert set(family.template_families) <= set(templates.PATTERNS)
    # Order comes from the Family.order fields, not from the file names.
    assert list(families.BUILTIN_FAMILIES) == sorted(
        families.BUILTIN_FAMILIES, key=lambda n: families.get(n).order)
    assert families.BUILTIN_FAMILIES == (
        "seq", "seqrec", "direct", "rating", "binary", "grounding", "profile")


def test_builtin_fields_say_what_was_special_cased():
    get = families.get
    assert [n for n in families.BUILTIN_FAMILIES if get(n).indexed] == [
        "seq", "seqrec", "direct", "grounding"]
    assert {n: get(n).target_kind for n in families.BUILTIN_FAMILIES} == {
        "seq": "item", "seqrec": "item", "direct": "item", "rating": "rating",
        "binary": "binary", "grounding": "text", "profile": "text"}
    assert [n for n in families.BUILTIN_FAMILIES if get(n).num_candidates] == ["direct"]
    assert [n for n in families.BUILTIN_FAMILIES if get(n).shows_candidates] == ["direct"]
    assert get("grounding").output_splits() == [("train", "train", ("seen",))]
    assert [s for s, _, _ in get("seq").output_splits()] == [
        "train", "validation", "test", "test_unseen"]
    assert families.EVAL_SPLITS == ("validation", "test")


def test_discover_registers_the_family_a_new_file_holds(tmp_path, monkeypatch):
    """Adding a built-in family is adding a module: `discover` finds it on disk."""
    pkg = tmp_path / "extra_families"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "core.py").write_text("raise AssertionError('core is not a family module')\n")
    (pkg / "last_item.py").write_text(textwrap.dedent('''
        from flanrec.data import templates
        from flanrec.data.families import Family, register

        templates.register_templates("last_item_t", {"user", "target"}, [
            ("Last item of user {user}?", "{target}"),
            ("User {user}: the last item?", "{target}"),
            ("Name user {user}'s last item.", "{target}")], replace=True)


        def examples(data, split_name, template_types=("seen",), shard_index=0,
                     num_shards=1):
            return iter(())


        FAMILY = register(Family(name="last_item", target_kind="item", examples=examples,
                                 template_families=("last_item_t",), order=35))
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        found = families.discover("extra_families", [str(pkg)])
        assert found == ("last_item",)
        assert families.names().index("last_item") == families.names().index("direct") + 1
        assert families.get("last_item").examples.__module__ == "extra_families.last_item"
    finally:
        families.unregister("last_item")
        templates.PATTERNS.pop("last_item_t", None)
        templates.FIELDS.pop("last_item_t", None)
        templates.ANSWER_FIELDS.pop("last_item_t", None)
        for name in [m for m in sys.modules if m.startswith("extra_families")]:
            del sys.modules[name]
    assert "last_item" not in families.names()


def test_task_meta_refuses_what_is_not_a_task_over_a_prepared_dir():
    from flanrec.data.task_meta import NotAFlanrecTaskError, task_meta

    with pytest.raises(NotAFlanrecTaskError, match="no_such_task: no seqio task"):
        task_meta("no_such_task")
