"""Analytic FLOPs of a training step and the peak FLOP/s of the devices, for honest MFU.

Model FLOPs count only the matmuls the architecture needs (2 FLOPs per multiply-add; the
backward pass costs twice the forward, so training = 3× forward), over the padded shapes the
step actually computes. Rematerialisation, norms, softmax and embedding gathers are not
counted, following PaLM's MFU definition: MFU says how much of the hardware the *model* uses.
"""

from __future__ import annotations

import time

import gin
import jax
import jax.numpy as jnp

from flanrec.model.config import T5Config


def forward_flops_per_example(cfg: T5Config, enc_len: int, dec_len: int) -> dict[str, float]:
    """Forward-pass matmul FLOPs for one example, split by where they are spent."""
    d, f, inner, v = cfg.d_model, cfg.d_ff, cfg.inner_dim, cfg.vocab_size
    proj = 4 * d * inner            # q, k, v, out projections per token
    mlp = 3 * d * f                 # gated-GELU: wi_0, wi_1, wo
    enc_dense = cfg.num_encoder_layers * enc_len * 2 * (proj + mlp)
    # Scores (QKᵀ) and the weighted sum (AV): 2 × len_q × len_k × inner, × 2 FLOPs/MAC.
    enc_attn = cfg.num_encoder_layers * 2 * 2 * enc_len * enc_len * inner
    # Decoder: self-attention projections + cross-attention q/out per decoder token,
    # cross-attention k/v over the encoder outputs, the MLP, and the logits layer.
    dec_dense = cfg.num_decoder_layers * 2 * (
        dec_len * (proj + 2 * d * inner + mlp) + enc_len * 2 * d * inner)
    dec_attn = cfg.num_decoder_layers * 2 * 2 * inner * (dec_len * dec_len + dec_len * enc_len)
    logits = 2 * dec_len * d * v
    return {"encoder": float(enc_dense + enc_attn), "decoder": float(dec_dense + dec_attn),
            "logits": float(logits), "attention": float(enc_attn + dec_attn)}


def train_flops_per_step(cfg: T5Config, batch_size: int, enc_len: int, dec_len: int) -> float:
    """Model FLOPs of one optimizer step over the global batch (forward + backward)."""
    fwd = forward_flops_per_example(cfg, enc_len, dec_len)
    return 3.0 * batch_size * (fwd["encoder"] + fwd["decoder"] + fwd["logits"])


# Dense bf16 peak per chip (vendor figures). Extend through gin for other hardware.
PEAK_FLOPS = {
    "TPU v2": 22.5e12, "TPU v3": 61.5e12, "TPU v4": 275e12, "TPU v5 lite": 197e12,
    "TPU v5e": 197e12, "TPU v5": 459e12, "TPU v5p": 459e12, "TPU v6 lite": 918e12,
    "TPU v6e": 918e12, "NVIDIA A100": 312e12, "NVIDIA H100": 989e12, "NVIDIA H200": 989e12,
}


def measure_matmul_flops(n: int = 1024, seconds: float = 0.3) -> float:
    """FLOP/s of a square fp32 matmul on the default device: a measured CPU 'peak'.

    CPUs have no meaningful datasheet peak for XLA; a short probe gives the ceiling this
    machine actually reaches, so CPU MFU reads as "fraction of a well-shaped matmul".
    """
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or count < 3:
        f(a).block_until_ready()
        count += 1
    return 2.0 * n ** 3 * count / (time.perf_counter() - start)


@gin.configurable
def peak_flops_total(peak_flops_per_device: float | None = None,
                     table: dict[str, float] | None = None) -> tuple[float, str]:
    """Peak FLOP/s of all devices of the job, and where the number came from.

    A gin value wins; then the per-device-kind table; on CPU (fake devices share the same
    cores) the measured matmul rate of this process times the number of processes.
    """
    devices = jax.devices()
    if peak_flops_per_device is not None:
        return peak_flops_per_device * len(devices), "gin"
    kind = devices[0].device_kind
    for name, peak in sorted((table or PEAK_FLOPS).items(), key=lambda kv: -len(kv[0])):
        if kind.lower().startswith(name.lower()):
            return peak * len(devices), f"table[{name}]"
    if devices[0].platform == "cpu":
        return measure_matmul_flops() * jax.process_count(), "measured fp32 matmul"
    return float("nan"), f"unknown device kind {kind!r}"


def utilisation(achieved_flops: float, peak_flops: float) -> float:
    """`achieved / peak`, or NaN when that would exceed 1: a rate above the peak proves the
    peak wrong (a probe taken under load, a gin value too low), and a utilisation above 100%
    must never be printed. Callers with a measured peak raise it to the achieved rate first
    (`Throughput`, bench/train_throughput.py)."""
    if not (peak_flops > 0) or achieved_flops > peak_flops * (1 + 1e-9):
        return float("nan")
    return achieved_flops / peak_flops

