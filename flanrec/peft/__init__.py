"""Parameter-efficient tuning: soft prompts and LoRA on a frozen Flan-T5 backbone.

`config` (what the adapters are), `specs` (their names, shapes, logical axes), `params`
(trainable split, optax masks, LoRA merge), `checkpoint` (adapter-only checkpoints that point
at their backbone). Only `config` and `specs` are imported here: `flanrec.model.network`
depends on them, and the rest depends on the network.
"""

from flanrec.peft.config import (
    FUSIONS,
    TUNINGS,
    LoraConfig,
    PeftT5Config,
    PromptConfig,
    base_config,
    with_adapters,
)
from flanrec.peft.specs import ADAPTER_KEYS, adapter_specs, all_param_specs

__all__ = ["ADAPTER_KEYS", "FUSIONS", "TUNINGS", "LoraConfig", "PeftT5Config", "PromptConfig",
           "adapter_specs", "all_param_specs", "base_config", "with_adapters"]
