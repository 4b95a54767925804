"""Names, shapes and logical axes of the adapter parameters (the adapters' `param_specs`).

Adapters live under their own top-level keys of the parameter tree, so the backbone's names
(`common.param_specs`) never change and a checkpoint of only the adapters is one subtree:

    prompt/<family>               [P, d_model]   (prompt_length, embed)
    lora/<kernel path>/lora_a     [d_in, rank]   (<kernel's in axis>, lora_rank)
    lora/<kernel path>/lora_b     [rank, d_out]  (lora_rank, <kernel's out axis>)

e.g. `lora/encoder/layers_0/attention/query/lora_a` adapts
`encoder/layers_0/attention/query/kernel`. LoRA factors take the logical axes of the kernel
they adapt, so under model parallelism A is split like the kernel's rows and B like its
columns; `lora_rank` and `prompt_length` are small and stay unsharded (no rule names them).
"""

from __future__ import annotations

from flanrec.model.config import T5Config
from flanrec.model.params import ParamSpec, param_specs
from flanrec.peft.config import lora_of, prompt_of

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
