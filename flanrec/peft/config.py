"""What a parameter-efficient run adds to a T5 model: a soft prompt, LoRA adapters, or both.

The adapters are part of the *model config* (`PeftT5Config`, a `T5Config` subclass), not a
side argument, because they change the model's parameter tree and its computation (a concat
prompt lengthens the encoder sequence). Everything that builds `Transformer(config)` from a
config — `flanrec.model.decoding`, `flanrec.api` — therefore applies a soft prompt without
knowing about it, and a plain `T5Config` (no adapters) keeps the exact Flan-T5 model.

Pure Python on purpose: `flanrec.model.network` reads these fields by duck typing, and
checkpoint metadata stores them as JSON.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from flanrec.model.config import T5Config

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
