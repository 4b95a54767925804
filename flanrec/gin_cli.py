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
