"""Analytic memory of one fp32 training step of T5 v1.1 with AdamW (no rematerialisation).

Why analytic: a measured peak alone says nothing about waste. The estimate counts what the
algorithm must hold at its peak (end of the forward pass / start of the backward pass):
parameters, gradients (they appear as the backward runs, while activations are freed; we
count both in full, an upper bound of the true overlap), both AdamW moments, and the tensors
the backward pass needs from the forward pass. `train_throughput.py` compares the measured
peak RSS growth of each framework with it (goal: within 1.3x).
"""

from __future__ import annotations

from typing import Any

from flanrec.model.config import T5Config
from flanrec.model.params import count_params


def activation_elements(cfg: T5Config, batch: int, enc_len: int, dec_len: int) -> dict[str, int]:
    """Elements saved for the backward pass, by part of the model (no remat, no dropout).

    Per encoder layer over T = batch*enc_len tokens: the layer input, its RMSNorm output,
    q, k, v, the softmax probabilities [batch, heads, L, L], the attention output before the
    out-projection, the mid residual and its norm, and the gated-GELU's wi_0 output, GELU
    output, wi_1 output and their product. The decoder adds cross-attention (k, v over the
    encoder tokens, probabilities [batch, heads, dec_len, enc_len]); the top adds logits and
    the softmax of the loss [batch*dec_len, vocab].
    """
    d, f, inner, h, v = cfg.d_model, cfg.d_ff, cfg.inner_dim, cfg.num_heads, cfg.vocab_size
    te, td = batch * enc_len, batch * dec_len
    enc_layer = te * (4 * d + 4 * inner + 4 * f) + batch * h * enc_len * enc_len
    dec_self = td * (2 * d + 4 * inner) + batch * h * dec_len * dec_len
    dec_cross = td * (2 * d + 2 * inner) + te * 2 * inner + batch * h * dec_len * enc_len
    dec_mlp = td * (2 * d + 4 * f)
    return {
        "encoder": cfg.num_encoder_layers * enc_layer + te * d,
        "decoder": cfg.num_decoder_layers * (dec_self + dec_cross + dec_mlp) + td * d,
        "logits": 2 * td * v,
    }


def train_step_bytes(cfg: T5Config, batch: int, enc_len: int, dec_len: int,
                     optimizer_slots: int = 2, bytes_per_element: int = 4) -> dict[str, Any]:
    """Bytes of params, grads, optimizer state (`optimizer_slots` full-size moments: 2 for
    AdamW) and activations of one step; `total` is their sum."""
    n = count_params(cfg)
    act = activation_elements(cfg, batch, enc_len, dec_len)
    out: dict[str, Any] = {
        "params": n * bytes_per_element,
        "grads": n * bytes_per_element,
        "optimizer": optimizer_slots * n * bytes_per_element,
        "activations": sum(act.values()) * bytes_per_element,
        "activations_by_part": {k: x * bytes_per_element for k, x in act.items()},
    }
    out["total"] = out["params"] + out["grads"] + out["optimizer"] + out["activations"]
    return out
