"""The import graph of flanrec/ and tasks/, read from the source (no module is imported).

Why a test: the layout (jobs as packages over shared packages, a small top level, imports
at the top of modules) decays one convenient import at a time. Every import statement
counts, at module level, inside functions and under `if TYPE_CHECKING:` alike, since a cycle
hidden in a function is still a cycle a reader has to untangle.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
JOBS = ("train", "infer", "eval", "prepare", "convert", "baselines", "ensemble", "quickstart")
MAX_TOP_LEVEL = 12
MAX_FUNCTION_LEVEL = 30  # function-level imports of flanrec modules: fewer than this

# A job may use another job's *library* modules, never its entry (job, cli, __main__); each
# such use is listed here with its reason.
CROSS_JOB = {
    ("train", "flanrec.infer.rank_eval"): "ranked validation during training runs inference",
    ("ensemble", "flanrec.infer.modes"): "template ensembles decode with the inference modes",
}
# The one shared module that imports jobs: it registers their gin configurables.
REGISTRY = "flanrec.configurables"


def _modules() -> dict[str, Path]:
    mods = {}
    for base in ("flanrec", "tasks"):
        for path in (REPO / base).rglob("*.py"):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            mods[".".join(parts)] = path
    return mods


MODULES = _modules()


def _known(name: str) -> str | None:
    """The longest prefix of `name` that is one of our modules."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _targets(module: str, path: Path, node: ast.Import | ast.ImportFrom) -> set[str]:
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = module.split(".") if path.name == "__init__.py" else \
                module.split(".")[:-1]
            package = package[:len(package) - node.level + 1]
            base = ".".join(package + ([node.module] if node.module else []))
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                 for a in node.names]
    return {t for t in map(_known, names) if t and t != module}


def _imports_of(module: str, path: Path) -> list[tuple[str, str, int, bool]]:
    out = []
    todo: list[tuple[ast.AST, bool]] = [(ast.parse(path.read_text(), str(path)), False)]
    while todo:
        node, in_function = todo.pop()
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import | ast.ImportFrom):
                out.extend((module, t, child.lineno, inner)
                           for t in _targets(module, path, child))
            todo.append((child, inner))
    return out


def _imports() -> list[tuple[str, str, int, bool]]:
    """(importer, imported, line, inside a function) for every import of our modules."""
    return [edge for module, path in MODULES.items() for edge in _imports_of(module, path)]


IMPORTS = _imports()


def _job(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "flanrec" and len(parts) > 1 and parts[1] in JOBS else None


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(edges.get(child, ())))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found


def test_the_graph_was_read():
    assert len(MODULES) > 100 and len(IMPORTS) > 300
    assert ("flanrec.train.cli", "flanrec.train.job") in {(a, b) for a, b, _, _ in IMPORTS}


def test_no_import_cycles_function_level_included():
    edges: dict[str, set[str]] = {}
    for importer, imported, _, _ in IMPORTS:
        edges.setdefault(importer, set()).add(imported)
        # Importing a.b.c runs a/b/__init__ first: an edge to each enclosing package the
        # importer is not itself inside.
        parent = imported.rpartition(".")[0]
        while parent and not importer.startswith(parent + ".") and parent in MODULES:
            edges[importer].add(parent)
            parent = parent.rpartition(".")[0]
    assert _cycles(edges) == []


def test_at_most_twelve_modules_at_the_top_of_flanrec():
    top = sorted(p.name for p in (REPO / "flanrec").glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL, top


def test_few_function_level_imports_of_flanrec():
    lazy = sorted({(a, line) for a, b, line, inner in IMPORTS
                   if inner and b.split(".")[0] == "flanrec"})
    assert len(lazy) < MAX_FUNCTION_LEVEL, "\n".join(f"{a}:{line}" for a, line in lazy)


def test_jobs_import_no_other_job():
    crossing = sorted({(a, b) for a, b, _, _ in IMPORTS
                       if _job(a) and _job(b) and _job(a) != _job(b)})
    unlisted = [(a, b) for a, b in crossing if (_job(a), b) not in CROSS_JOB]
    assert unlisted == []
    entries = [(a, b) for a, b in crossing if b.rpartition(".")[2] in ("job", "cli", "__main__")]
    assert entries == []


def test_shared_modules_import_no_job_except_the_gin_registry():
    shared_to_job = sorted({(a, b) for a, b, _, _ in IMPORTS
                            if a.startswith("flanrec") and not _job(a) and _job(b)
                            and a != REGISTRY})
    assert shared_to_job == []


def test_every_job_package_has_one_layout():
    """`__main__.py` (what `python -m` runs), a `job` module (the job's function) and the
    command line in `cli` (baselines and ensemble keep theirs in `__main__`)."""
    for job in JOBS:
        package = REPO / "flanrec" / job
        assert (package / "__init__.py").is_file() and (package / "__main__.py").is_file(), job
        if job not in ("baselines", "ensemble"):
            assert (package / "job.py").is_file(), job
