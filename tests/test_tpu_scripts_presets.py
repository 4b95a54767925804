"""gin/experiments/*_v4_8 / _v4_32 / _v5e_16 and gin/partitioning/ presets: each parses with
the trainer's own gin set-up, its mesh fits the slice it names, its batch divides the
data-parallel size, every parameter and optimizer-state array shards evenly, and the memory
the comments add up is what the real shardings give.

The shardings are computed for the real Flan-T5 base / XL shapes on fake CPU devices
(jax.eval_shape: nothing is allocated), so this checks the presets' arithmetic, not TPU
speed or XLA's actual peak memory; docs/tpu.md marks those as estimates.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GIB = 2**30

# experiment → (JAX devices of the slice, HBM GiB per device, fp32 params GiB per device the
# file's comment states, expected MODEL_DIR-independent task name)
EXPERIMENTS = {
    "flan_t5_base_ml1m_v4_8.gin": (4, 32, 0.92, "ml1m_rec_mix"),
    "flan_t5_base_amazon_beauty_v4_8.gin": (4, 32, 0.92, "amazon_beauty_rec_mix"),
    "flan_t5_xl_ml1m_v4_32.gin": (16, 32, 5.3, "ml1m_rec_mix"),
    "flan_t5_xl_amazon_beauty_v4_32.gin": (16, 32, 5.3, "amazon_beauty_rec_mix"),
    "flan_t5_xl_ml1m_v5e_16.gin": (16, 16, 0.66, "ml1m_rec_mix"),
}

PROBE = r'''
import json, math, sys
import gin, jax
import numpy as np
from flanrec import partitioning
from flanrec.train import steps as trainer
from flanrec.model.network import Transformer
import flanrec.configurables
from flanrec.frontend.gin_cli import configure_gin

@gin.configurable
def probe(model_config, mesh_shape, rules, batch_size, lengths, num_microbatches, optimizer,
          task, initial_checkpoint):
    return locals()

BINDINGS = ["MODEL_DIR = '/unused'", "MIXTURE_OR_TASK_MODULE = None",
            "probe.model_config = %MODEL_CONFIG", "probe.mesh_shape = %MESH_SHAPE",
            "probe.rules = @logical_axis_rules()", "probe.batch_size = %BATCH_SIZE",
            "probe.lengths = %TASK_FEATURE_LENGTHS",
            "probe.num_microbatches = %NUM_MICROBATCHES",
            "probe.optimizer = @make_optimizer()", "probe.task = %MIXTURE_OR_TASK_NAME",
            "probe.initial_checkpoint = %INITIAL_CHECKPOINT_PATH"]

def nbytes(leaf, sharding):
    shard = sharding.shard_shape(leaf.shape)
    for dim, (full, part) in enumerate(zip(leaf.shape, shard)):
        assert part * (full // part) == full, (leaf.shape, sharding.spec)
    return math.prod(shard) * leaf.dtype.itemsize

out, abstract_of = {}, {}
for path, n_devices in json.loads(sys.argv[1]).items():
    configure_gin([path], BINDINGS)
    p = probe()
    try:
        remat = gin.query_parameter("flanrec.train.train.remat_policy")
    except ValueError:
        remat = "none"
    cfg, rules = p["model_config"], tuple(p["rules"])
    mesh = partitioning.make_mesh(p["mesh_shape"], ("data", "model"),
                                  jax.devices()[:n_devices])
    tx, _ = p["optimizer"]
    key = (cfg, remat)  # the ml1m and amazon variants share shapes: trace each model once
    if key not in abstract_of:
        abstract_of[key] = trainer.abstract_state(Transformer(cfg, remat_policy=remat), tx)
    abstract = abstract_of[key]
    sh = trainer.state_shardings(abstract, cfg, mesh, rules)
    params = sum(nbytes(a, s) for a, s in zip(jax.tree_util.tree_leaves(abstract.params),
                                               jax.tree_util.tree_leaves(sh.params)))
    opt = sum(nbytes(a, s) for a, s in zip(jax.tree_util.tree_leaves(abstract.opt_state),
                                            jax.tree_util.tree_leaves(sh.opt_state)))
    largest = max(math.prod(a.shape) * a.dtype.itemsize
                  for a in jax.tree_util.tree_leaves(abstract.params))
    out[path] = dict(
        name=cfg.name, d=cfg.d_model, f=cfg.d_ff, h=cfg.num_heads, vocab=cfg.vocab_size,
        layers=cfg.num_encoder_layers + cfg.num_decoder_layers, remat=remat,
        mesh=dict(mesh.shape), dp=partitioning.data_parallel_size(mesh, rules),
        fsdp=any(r[0] == "embed" and r[1] for r in rules),
        batch=p["batch_size"], micro=p["num_microbatches"], lengths=dict(p["lengths"]),
        params_bytes=params, opt_bytes=opt, largest_param=largest,
        total_params=sum(math.prod(a.shape) for a in jax.tree_util.tree_leaves(abstract.params)),
        task=p["task"], initial_checkpoint=p["initial_checkpoint"])
print("RESULT " + json.dumps(out))
'''


def activation_bytes_per_row(r: dict) -> float:
    """The comments' activation arithmetic (bf16 tensors 2 B, attention logits+probs 6 B,
    output logits and their gradient 8 B), heads/mlp/vocab divided by the model axis."""
    L, T = r["lengths"]["inputs"], r["lengths"]["targets"]
    d, f, h, V, m = r["d"], r["f"], r["h"], r["vocab"], r["mesh"]["model"]

    def layer(n: int, kv: int) -> float:  # one block over n queries attending to kv keys
        return 2 * (3 * n * d + (4 * n * d + 4 * n * f) / m) + 6 * (h / m) * n * kv

    enc = layer(L, L)
    dec = layer(T, T) + 2 * 2 * (T + L) * d / m + 6 * (h / m) * T * L  # + cross-attention
    per_stack = r["layers"] // 2
    logits = T * V / m * 8
    if r["remat"] == "full":  # keep each layer's input; recompute one layer at a time
        return per_stack * 2 * (L + T) * d + 2 * L * d + max(enc, dec) + logits
    return per_stack * (enc + dec) + logits


@pytest.fixture(scope="module")
def probed() -> dict[str, dict]:
    devices = {str(REPO / "gin" / "experiments" / name): n
               for name, (n, *_) in EXPERIMENTS.items()}
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=16")
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(devices)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    return {Path(k).name: v for k, v in json.loads(line[len("RESULT "):]).items()}


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_experiment_fits_its_slice(probed, name):
    devices, hbm_gib, stated_params_gib, task = EXPERIMENTS[name]
    r = probed[name]
    assert r["task"] == task
    assert r["initial_checkpoint"].startswith("checkpoints/flan_t5_")  # where setup.sh puts it
    assert r["initial_checkpoint"].split("/")[1] == r["name"].replace("-", "_")
    assert r["mesh"]["data"] * r["mesh"]["model"] == devices
    rows = r["batch"] / (r["dp"] * r["micro"])
    assert rows == int(rows) and rows >= 1, (r["batch"], r["dp"], r["micro"])
    params = r["params_bytes"] / GIB
    # The comment's per-chip state is what the real shardings give (±3%).
    assert params == pytest.approx(stated_params_gib, rel=0.03), params
    state = 2 * r["params_bytes"] + r["opt_bytes"]  # params + grads + optimizer
    gathered = 2 * r["total_params"] * 4 / r["layers"] + r["largest_param"] if r["fsdp"] else 0
    acts = rows * activation_bytes_per_row(r)
    total = (state + gathered + acts) / GIB
    print(f"{name}: state {state / GIB:.2f} GiB + gathered {gathered / GIB:.2f} + "
          f"activations {acts / GIB:.2f} ({int(rows)} rows) = {total:.1f} of {hbm_gib} GiB")
    # Leave a fifth of HBM for XLA's temporaries and fragmentation.
    assert total < 0.8 * hbm_gib


def test_xl_needs_the_preset_it_uses(probed):
    """Why the XL presets exist: replicated, XL's fp32 params + grads alone exceed 80% of a
    v4 chip and all of a v5e chip."""
    r = probed["flan_t5_xl_ml1m_v4_32.gin"]
    replicated = 2 * r["total_params"] * 4 / GIB
    assert replicated > 0.6 * 32 and replicated > 16
    assert r["mesh"] == {"data": 8, "model": 2}
    v5e = probed["flan_t5_xl_ml1m_v5e_16.gin"]
    assert v5e["fsdp"] and v5e["mesh"] == {"data": 16, "model": 1}


def test_partitioning_presets_name_their_meshes():
    presets = REPO / "gin" / "partitioning"
    assert "MESH_SHAPE = (4, 1)" in (presets / "v4_8_data_parallel.gin").read_text()
    assert "MESH_SHAPE = (8, %NUM_MODEL_PARTITIONS)" in (
        presets / "v4_32_model_parallel_2.gin").read_text()
    assert "logical_axis_rules.kind = 'fsdp'" in (presets / "fsdp.gin").read_text()
    assert "include 'gin/partitioning/fsdp.gin'" in (presets / "v5e_16_fsdp.gin").read_text()
