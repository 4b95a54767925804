"""The model's parameter contract: the one table of Flan-T5 parameter names, shapes and
logical axes that the network, every converter, the partitioner and the checkpoints agree on.

Names follow T5X (`encoder/layers_0/attention/query/kernel`, …) so T5X checkpoints map one to
one; the HF mapping is then a single renaming table in `flanrec.interop.hf`. The table lives
with the model (it *is* the model's parameter tree; a test checks `Transformer.init` against
it) but is plain Python, so converters validate a checkpoint before any JAX model is built.
Adapters add their own entries under separate top-level keys: `flanrec.model.adapters`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from flanrec.errors import UserError
from flanrec.model.config import T5Config

ParamSpec = tuple[tuple[int, ...], tuple[str, ...]]  # (shape, logical axis names)
LOGITS_KERNEL = "decoder/logits_dense/kernel"  # the untied output projection


def param_specs(cfg: T5Config) -> dict[str, ParamSpec]:
    """Every parameter of a T5 v1.1 model: '/'-joined name → (shape, logical axes).

    A tied model (`cfg.logits_via_embedding`) has no `decoder/logits_dense/kernel`: its
    logits read `token_embedder/embedding`."""
    d, f, inner, h = cfg.d_model, cfg.d_ff, cfg.inner_dim, cfg.num_heads
    nb = cfg.relative_attention_num_buckets
    specs: dict[str, ParamSpec] = {
        "token_embedder/embedding": ((cfg.vocab_size, d), ("vocab", "embed")),
        "encoder/relpos_bias/rel_embedding": ((h, nb), ("heads", "relpos_buckets")),
        "encoder/encoder_norm/scale": ((d,), ("embed",)),
        "decoder/relpos_bias/rel_embedding": ((h, nb), ("heads", "relpos_buckets")),
        "decoder/decoder_norm/scale": ((d,), ("embed",)),
    }
    if not cfg.logits_via_embedding:
        specs[LOGITS_KERNEL] = ((d, cfg.vocab_size), ("embed", "vocab"))

    def attention(prefix: str) -> None:
        for proj in ("query", "key", "value"):
            specs[f"{prefix}/{proj}/kernel"] = ((d, inner), ("embed", "joined_kv"))
        specs[f"{prefix}/out/kernel"] = ((inner, d), ("joined_kv", "embed"))

    def mlp(prefix: str) -> None:
        specs[f"{prefix}/wi_0/kernel"] = ((d, f), ("embed", "mlp"))
        specs[f"{prefix}/wi_1/kernel"] = ((d, f), ("embed", "mlp"))
        specs[f"{prefix}/wo/kernel"] = ((f, d), ("mlp", "embed"))

    for i in range(cfg.num_encoder_layers):
        p = f"encoder/layers_{i}"
        specs[f"{p}/pre_attention_layer_norm/scale"] = ((d,), ("embed",))
        attention(f"{p}/attention")
        specs[f"{p}/pre_mlp_layer_norm/scale"] = ((d,), ("embed",))
        mlp(f"{p}/mlp")
    for i in range(cfg.num_decoder_layers):
        p = f"decoder/layers_{i}"
        specs[f"{p}/pre_self_attention_layer_norm/scale"] = ((d,), ("embed",))
        attention(f"{p}/self_attention")
        specs[f"{p}/pre_cross_attention_layer_norm/scale"] = ((d,), ("embed",))
        attention(f"{p}/encoder_decoder_attention")
        specs[f"{p}/pre_mlp_layer_norm/scale"] = ((d,), ("embed",))
        mlp(f"{p}/mlp")
    return specs


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict → {'a/b/c': leaf}."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """{'a/b/c': leaf} → nested dict (the layout Flax modules and Orbax expect)."""
    tree: dict[str, Any] = {}
    for name, value in flat.items():
        node = tree
        *parents, leaf = name.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def check_params(flat: Mapping[str, Any], cfg: T5Config, source: str) -> None:
    """Refuse a parameter set that does not fit `cfg` exactly, naming the offending entries.

    Missing parameters are never random-initialised: a silently fresh layer would make every
    later number meaningless while the run still "works".
    """
    specs = param_specs(cfg)
    missing = sorted(set(specs) - set(flat))
    unexpected = sorted(set(flat) - set(specs))
    problems = []
    if missing:
        problems.append(f"missing parameters {missing[:5]}{' …' if len(missing) > 5 else ''}"
                        f" ({len(missing)} in all)")
    if unexpected:
        problems.append(f"unexpected parameters {unexpected[:5]}"
                        f"{' …' if len(unexpected) > 5 else ''} ({len(unexpected)} in all)")
    for name in sorted(set(specs) & set(flat)):
        want = specs[name][0]
        got = tuple(np.shape(flat[name]))
        if got != want:
            problems.append(f"parameter {name} has shape {got}, expected {want}")
    if problems:
        raise ValueError(f"{source}: checkpoint does not fit the {cfg.name} model config: "
                         + "; ".join(problems) + _tying_hint(missing, unexpected))


def _tying_hint(missing: list[str], unexpected: list[str]) -> str:
    """Why the output projection alone differs: the checkpoint is tied and the config not,
    or the other way round (the one setting that explains it)."""
    if missing == [LOGITS_KERNEL] and not unexpected:
        return (" (the checkpoint has tied output embeddings: set "
                "T5Config.logits_via_embedding = True)")
    if unexpected == [LOGITS_KERNEL] and not missing:
        return (" (the checkpoint has an untied output projection but the config sets "
                "T5Config.logits_via_embedding = True)")
    return ""


class NonFiniteParamsError(UserError, ValueError):
    """A checkpoint holds NaN or inf weights."""


def check_finite(flat: Mapping[str, Any], source: str) -> None:
    """Refuse parameters holding NaN/inf, naming each parameter and its count of bad values.

    Why before anything starts: a NaN weight is otherwise discovered at step 1 as a NaN loss
    that reads like a learning-rate problem, or silently written into a converted checkpoint.
    """
    bad = []
    for name in sorted(flat):
        a = np.asarray(flat[name])
        if not np.issubdtype(a.dtype, np.floating):
            continue
        nan, inf = int(np.isnan(a).sum()), int(np.isinf(a).sum())
        if nan or inf:
            bad.append(f"{name} ({nan} NaN, {inf} inf of {a.size})")
    if bad:
        raise NonFiniteParamsError(
            f"{source}: {len(bad)} parameter(s) hold non-finite values: " + "; ".join(bad[:5])
            + (f"; … ({len(bad) - 5} more)" if len(bad) > 5 else "")
            + ". Refusing to use this checkpoint")


def count_params(cfg: T5Config) -> int:
    """Number of parameters implied by the table (no arrays allocated)."""
    return sum(int(np.prod(shape)) for shape, _ in param_specs(cfg).values())
