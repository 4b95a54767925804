"""What a parameter-efficient run adds to a T5 model: a soft prompt, LoRA adapters, or both —
their config, their parameters (names, shapes, logical axes) and how LoRA folds back in.

The adapters are part of the *model config* (`PeftT5Config`, a `T5Config` subclass), not a
side argument, because they change the model's parameter tree and its computation (a concat
prompt lengthens the encoder sequence). Everything that builds `Transformer(config)` from a
config — `flanrec.model.decoding`, `flanrec.api` — therefore applies a soft prompt without
knowing about it, and a plain `T5Config` (no adapters) keeps the exact Flan-T5 model.

Adapters live under their own top-level keys of the parameter tree, so the backbone's names
(`flanrec.model.params.param_specs`) never change and a checkpoint of only the adapters is one
subtree:

    prompt/<family>               [P, d_model]   (prompt_length, embed)
    lora/<kernel path>/lora_a     [d_in, rank]   (<kernel's in axis>, lora_rank)
    lora/<kernel path>/lora_b     [rank, d_out]  (lora_rank, <kernel's out axis>)

e.g. `lora/encoder/layers_0/attention/query/lora_a` adapts
`encoder/layers_0/attention/query/kernel`. LoRA factors take the logical axes of the kernel
they adapt, so under model parallelism A is split like the kernel's rows and B like its
columns; `lora_rank` and `prompt_length` are small and stay unsharded (no rule names them).

Pure Python and numpy on purpose: `flanrec.model.network` reads the config fields by duck
typing, checkpoint metadata stores them as JSON, and loaders check and merge adapters on the
host. Which parameters *train* under TUNING is the trainer's business (`flanrec.peft.params`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from flanrec.model.config import T5Config
from flanrec.model.params import ParamSpec, flatten, param_specs, unflatten

TUNINGS = ("full", "prompt", "lora")
FUSIONS = ("concat", "add")
PROMPT_INITS = ("vocab", "uniform", "zeros")
LORA_ATTENTION = ("query", "key", "value", "out")
LORA_MLP = ("wi_0", "wi_1", "wo")


def _as_tuple(obj: Any, field: str, value: Any) -> None:
    if isinstance(value, str):
        value = (value,)
    object.__setattr__(obj, field, tuple(value))


@dataclasses.dataclass(frozen=True)
class PromptConfig:
    """A learned instruction embedding (Lester et al. 2021) per task family.

    `fusion='concat'` prepends `length` learned vectors to the encoder's input embeddings
    (the attention mask grows by `length` always-visible keys); `fusion='add'` adds one
    learned vector to the embedding of every non-padding input token (`length` must be 1).
    `families`: one `[length, d_model]` table each, selected per row by `prompt_ids`
    (index into `families`); the trainer uses a single family, `'all'`.
    `init`: 'vocab' copies embeddings of random tokens among the first `init_vocab_size`
    rows of the backbone (Lester et al.'s best initialisation, done by the trainer once the
    backbone is loaded), 'uniform' draws from U(-0.5, 0.5), 'zeros' starts at the base model
    (the default for 'add').
    """

    length: int = 20
    fusion: str = "concat"
    families: tuple[str, ...] = ("all",)
    init: str = "vocab"
    init_vocab_size: int = 5000

    def __post_init__(self) -> None:
        _as_tuple(self, "families", self.families)
        if self.fusion not in FUSIONS:
            raise ValueError(f"PromptConfig.fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if self.init not in PROMPT_INITS:
            raise ValueError(f"PromptConfig.init must be one of {PROMPT_INITS}, "
                             f"got {self.init!r}")
        if self.length < 0:
            raise ValueError(f"PromptConfig.length must be >= 0, got {self.length}")
        if self.fusion == "add" and self.length != 1:
            raise ValueError("PromptConfig.fusion='add' adds ONE learned vector to every input "
                             f"position: set length=1 (got {self.length})")
        if not self.families or len(set(self.families)) != len(self.families) or any(
                not f or "/" in f for f in self.families):
            raise ValueError(f"PromptConfig.families must be distinct non-empty names without "
                             f"'/', got {self.families}")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Low-rank adapters W + (alpha / rank) · A B (Hu et al. 2021) on the named kernels.

    `targets` are kernel names inside every attention block (`query`, `key`, `value`, `out`;
    encoder self-, decoder self- and cross-attention) and MLP (`wi_0`, `wi_1`, `wo`). A is
    `[d_in, rank]` drawn with fan-in scaling, B is `[rank, d_out]` zeros, so a fresh adapter
    is exactly the base model.
    """

    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = LORA_ATTENTION

    def __post_init__(self) -> None:
        _as_tuple(self, "targets", self.targets)
        if self.rank <= 0:
            raise ValueError(f"LoraConfig.rank must be positive, got {self.rank}")
        bad = sorted(set(self.targets) - set(LORA_ATTENTION + LORA_MLP))
        if bad or not self.targets:
            raise ValueError(f"LoraConfig.targets: unknown kernels {bad}; expected a non-empty "
                             f"subset of {LORA_ATTENTION + LORA_MLP}")

    @property
    def scale(self) -> float:
        return float(self.alpha) / self.rank


@dataclasses.dataclass(frozen=True)
class PeftT5Config(T5Config):
    """A `T5Config` whose model also carries a soft prompt and/or LoRA adapters."""

    prompt: PromptConfig | None = None
    lora: LoraConfig | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.prompt, dict):
            object.__setattr__(self, "prompt", PromptConfig(**self.prompt))
        if isinstance(self.lora, dict):
            object.__setattr__(self, "lora", LoraConfig(**self.lora))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PeftT5Config:
        return super().from_dict(dict(d))  # __post_init__ rebuilds the nested configs


def with_adapters(cfg: T5Config, prompt: PromptConfig | None = None,
                  lora: LoraConfig | None = None) -> T5Config:
    """`cfg` plus adapters; the plain base config when there are none."""
    base = base_config(cfg)
    if prompt is None and lora is None:
        return base
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(T5Config)}
    return PeftT5Config(**fields, prompt=prompt, lora=lora)


def base_config(cfg: T5Config) -> T5Config:
    """The backbone's own `T5Config` (adapters stripped)."""
    if type(cfg) is T5Config:
        return cfg
    return T5Config(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(T5Config)})


def prompt_of(cfg: T5Config) -> PromptConfig | None:
    return getattr(cfg, "prompt", None)


def lora_of(cfg: T5Config) -> LoraConfig | None:
    return getattr(cfg, "lora", None)


def adapters_to_dict(cfg: T5Config) -> dict[str, Any]:
    """JSON form of the adapters (checkpoint metadata)."""
    p, lo = prompt_of(cfg), lora_of(cfg)
    return {"prompt": None if p is None else dataclasses.asdict(p),
            "lora": None if lo is None else dataclasses.asdict(lo)}


def adapters_from_dict(base: T5Config, d: dict[str, Any]) -> T5Config:
    p, lo = d.get("prompt"), d.get("lora")
    return with_adapters(base, None if p is None else PromptConfig(**p),
                         None if lo is None else LoraConfig(**lo))


# ------------------------------------------------------------- adapter parameters
PROMPT_KEY, LORA_KEY = "prompt", "lora"
ADAPTER_KEYS = (PROMPT_KEY, LORA_KEY)
_ATTENTION_BLOCKS = ("attention", "self_attention", "encoder_decoder_attention")


def lora_target_kernels(cfg: T5Config) -> list[str]:
    """Backbone kernel names (`.../kernel`) that get a LoRA adapter under `cfg`."""
    lora = lora_of(cfg)
    if lora is None:
        return []
    out = []
    for name in param_specs(cfg):
        parts = name.split("/")
        if len(parts) < 3 or parts[-1] != "kernel" or parts[-2] not in lora.targets:
            continue
        if parts[-3] in _ATTENTION_BLOCKS or parts[-3] == "mlp":
            out.append(name)
    return out


def adapter_specs(cfg: T5Config) -> dict[str, ParamSpec]:
    """Every adapter parameter of `cfg`: '/'-joined name → (shape, logical axes)."""
    specs: dict[str, ParamSpec] = {}
    prompt = prompt_of(cfg)
    if prompt is not None:
        for family in prompt.families:
            specs[f"{PROMPT_KEY}/{family}"] = ((prompt.length, cfg.d_model),
                                               ("prompt_length", "embed"))
    lora = lora_of(cfg)
    if lora is not None:
        base = param_specs(cfg)
        for kernel in lora_target_kernels(cfg):
            (d_in, d_out), (ax_in, ax_out) = base[kernel]
            stem = f"{LORA_KEY}/{kernel[:-len('/kernel')]}"
            specs[f"{stem}/lora_a"] = ((d_in, lora.rank), (ax_in, "lora_rank"))
            specs[f"{stem}/lora_b"] = ((lora.rank, d_out), ("lora_rank", ax_out))
    return specs


def all_param_specs(cfg: T5Config) -> dict[str, ParamSpec]:
    """Backbone and adapter parameters together: the full tree of `Transformer(cfg)`."""
    return {**param_specs(cfg), **adapter_specs(cfg)}


def check_all_params(flat: Mapping[str, Any], cfg: T5Config, source: str) -> None:
    """`flanrec.model.params.check_params` over backbone *and* adapters of `cfg` (names and
    shapes)."""
    specs = all_param_specs(cfg)
    missing = sorted(set(specs) - set(flat))
    unexpected = sorted(set(flat) - set(specs))
    problems = []
    if missing:
        problems.append(f"missing parameters {missing[:5]} ({len(missing)} in all)")
    if unexpected:
        problems.append(f"unexpected parameters {unexpected[:5]} ({len(unexpected)} in all)")
    problems += [f"parameter {n} has shape {tuple(np.shape(flat[n]))}, expected {specs[n][0]}"
                 for n in sorted(set(specs) & set(flat))
                 if tuple(np.shape(flat[n])) != specs[n][0]]
    if problems:
        raise ValueError(f"{source}: parameters do not fit the model config: "
                         + "; ".join(problems))


# ------------------------------------------------------------------------- LoRA merge
def merge_lora(cfg: T5Config, params: Mapping[str, Any]) -> tuple[T5Config, dict[str, Any]]:
    """Fold every adapter into its kernel, W + (alpha / rank) · A B, and drop `lora/…`.

    Returns a config without LoRA (a plain `T5Config` unless a prompt remains) and params
    that every exporter reads unchanged. Computed in float32 on the host.
    """
    lora = lora_of(cfg)
    if lora is None:
        return cfg, dict(params)
    flat = flatten(params)
    merged: dict[str, Any] = {}
    for name, value in flat.items():
        if name.startswith(LORA_KEY + "/"):
            continue
        merged[name] = value
    stems = sorted({n[len(LORA_KEY) + 1:].rsplit("/", 1)[0] for n in flat
                    if n.startswith(LORA_KEY + "/")})
    for stem in stems:
        kernel = f"{stem}/kernel"
        if kernel not in merged:
            raise ValueError(f"LoRA adapter {LORA_KEY}/{stem} has no kernel {kernel} to merge into")
        a = np.asarray(flat[f"{LORA_KEY}/{stem}/lora_a"], np.float32)
        b = np.asarray(flat[f"{LORA_KEY}/{stem}/lora_b"], np.float32)
        merged[kernel] = (np.asarray(merged[kernel], np.float32)
                          + np.float32(lora.scale) * (a @ b)).astype(np.float32)
    return with_adapters(base_config(cfg), prompt_of(cfg), None), unflatten(merged)
