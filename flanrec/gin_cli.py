"""T5X-style `--gin.NAME=VALUE` flags, shared by the train, infer and eval jobs.

Kept free of JAX and TF imports so `flanrec.eval` stays a light job.
"""

from __future__ import annotations

import argparse
import ast
from collections.abc import Sequence


def as_binding(name: str, value: str) -> str:
    """`--gin.X=V` → `X = V`, quoting V when it is not a literal or a gin reference."""
    v = value.strip()
    if v[:1] in "@%([{'\"" or v in ("None", "True", "False"):
        return f"{name} = {v}"
    try:
        ast.literal_eval(v)
        return f"{name} = {v}"
    except (ValueError, SyntaxError):
        return f"{name} = {v!r}"


def bindings_from_flags(parser: argparse.ArgumentParser, rest: Sequence[str],
                        raw: Sequence[str] = ()) -> list[str]:
    """`raw` gin bindings plus one per `--gin.NAME=VALUE` in `rest`; anything else in `rest`
    is a usage error naming the argument."""
    bindings = list(raw)
    for arg in rest:
        if arg.startswith("--gin.") and "=" in arg:
            name, value = arg[len("--gin."):].split("=", 1)
            bindings.append(as_binding(name, value))
        else:
            parser.error(f"unrecognised argument {arg!r} (gin macros are --gin.NAME=VALUE)")
    return bindings


def split_search_paths(values: Sequence[str]) -> list[str]:
    """`--gin_search_paths` in T5X's form: comma-separated, and/or the flag repeated."""
    return [p for value in values for p in value.split(",") if p.strip()]


def add_gin_flags(parser: argparse.ArgumentParser, job: str = "train") -> None:
    """T5X's gin flags, identical in every gin job: `--gin_file` (repeatable),
    `--gin_bindings` (raw, repeatable), `--gin_search_paths` (comma-separated or repeated);
    `--gin.NAME=VALUE` is read from the rest of the command line (`bindings_from_flags`)."""
    parser.add_argument("--gin_file", action="append", default=[],
                        help="gin file (repeatable; later files override earlier ones)")
    parser.add_argument("--gin_bindings", action="append", default=[],
                        help=f"raw gin binding, e.g. '{job}.NAME = VALUE' (repeatable)")
    parser.add_argument("--gin_search_paths", action="append", default=[],
                        help="directories searched for gin files and includes "
                             "(comma-separated or repeated; cwd and the repo root are added)")
