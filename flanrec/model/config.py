"""Model hyper-parameters for T5 v1.1 / Flan-T5, and the official presets.

A frozen dataclass (not a gin-only object) so the same config travels inside checkpoints
(as JSON), through `jax.jit` as a static argument, and into gin via `get_preset`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

FLAN_T5_VOCAB_SIZE = 32128  # 32000 SentencePiece pieces + 100 extra ids, padded to 128.


@dataclasses.dataclass(frozen=True)
class T5Config:
    """Shapes and numerics of a T5 v1.1 encoder-decoder (the Flan-T5 architecture).

    Only the v1.1 family is supported on purpose: gated-GELU MLP, RMSNorm without bias.
    Checkpoints of other variants (T5 v1.0's ReLU MLP) are refused by the converters rather
    than silently mis-loaded.

    `logits_via_embedding` (T5X's name for it): score the vocabulary with the token
    embedding table itself instead of a separate `decoder/logits_dense/kernel`, the logits
    scaled by 1/sqrt(d_model) as T5X's decoder and transformers' tied T5 do. Flan-T5 is
    untied (False); tying gives every output row the gradient of its input occurrences too,
    which matters when most vocabulary entries (item ids) are rare targets.
    """

    vocab_size: int = FLAN_T5_VOCAB_SIZE
    d_model: int = 512
    d_ff: int = 1024
    num_heads: int = 6
    d_kv: int = 64
    num_encoder_layers: int = 8
    num_decoder_layers: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.1
    layer_norm_epsilon: float = 1e-6
    # Activation dtype; parameters are always stored in float32.
    dtype: str = "float32"
    # Dtype of the logits and of the loss; fp32 keeps softmax stable under bf16 activations.
    logits_dtype: str = "float32"
    # Tied output projection (no decoder/logits_dense); configs saved without it are untied.
    logits_via_embedding: bool = False
    pad_token_id: int = 0
    eos_token_id: int = 1
    decoder_start_token_id: int = 0
    name: str = "custom"

    def __post_init__(self) -> None:
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"T5Config.dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")
        if not isinstance(self.logits_via_embedding, bool):
            raise ValueError(f"T5Config.logits_via_embedding must be True or False, got "
                             f"{self.logits_via_embedding!r}")
        for field in ("vocab_size", "d_model", "d_ff", "num_heads", "d_kv"):
            if getattr(self, field) <= 0:
                raise ValueError(f"T5Config.{field} must be positive, got {getattr(self, field)}")

    @property
    def inner_dim(self) -> int:
        """heads × d_kv: the width of the joined query/key/value projections."""
        return self.num_heads * self.d_kv

    def replace(self, **changes: Any) -> T5Config:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> T5Config:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown T5Config fields: {unknown}")
        return cls(**d)


_FLAN = dict(vocab_size=FLAN_T5_VOCAB_SIZE, d_kv=64)

PRESETS: dict[str, T5Config] = {
    # Tiny: for tests only. vocab 128 keeps the logits matmul cheap.
    "tiny": T5Config(vocab_size=128, d_model=32, d_ff=64, num_heads=4, d_kv=8,
                     num_encoder_layers=2, num_decoder_layers=2, name="tiny"),
    "flan-t5-small": T5Config(**_FLAN, d_model=512, d_ff=1024, num_heads=6,
                              num_encoder_layers=8, num_decoder_layers=8, name="flan-t5-small"),
    "flan-t5-base": T5Config(**_FLAN, d_model=768, d_ff=2048, num_heads=12,
                             num_encoder_layers=12, num_decoder_layers=12, name="flan-t5-base"),
    "flan-t5-large": T5Config(**_FLAN, d_model=1024, d_ff=2816, num_heads=16,
                              num_encoder_layers=24, num_decoder_layers=24, name="flan-t5-large"),
    "flan-t5-xl": T5Config(**_FLAN, d_model=2048, d_ff=5120, num_heads=32,
                           num_encoder_layers=24, num_decoder_layers=24, name="flan-t5-xl"),
    "flan-t5-xxl": T5Config(**_FLAN, d_model=4096, d_ff=10240, num_heads=64,
                            num_encoder_layers=24, num_decoder_layers=24, name="flan-t5-xxl"),
}


def get_preset(name: str, **overrides: Any) -> T5Config:
    """Return a preset by name (`tiny`, `flan-t5-small` … `flan-t5-xxl`), optionally changed."""
    key = name.replace("_", "-")
    if key not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[key].replace(**overrides) if overrides else PRESETS[key]
