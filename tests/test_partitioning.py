"""Mesh, logical-axis rules, and partitioning equivalence on 8 fake CPU devices.

The equivalence check runs in a subprocess because the fake-device count must be fixed
before JAX starts: the same 5 steps (dropout on) from the same init on 1 device, on a
(data=8) mesh, a (data=4, model=2) mesh and with FSDP rules must give the same losses and
parameters — partitioning may change where numbers live, never what they are.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from flanrec import partitioning
from flanrec.model.config import get_preset
from flanrec.model.params import param_specs, unflatten

REPO = Path(__file__).resolve().parents[1]


def test_standard_rules_map_t5x_logical_axes():
    rules = dict(partitioning.logical_axis_rules("standard"))
    assert rules["batch"] == "data"
    for name in ("vocab", "mlp", "heads", "joined_kv"):
        assert rules[name] == "model"
    for name in ("embed", "kv", "length", "relpos_buckets"):
        assert rules[name] is None


def test_fsdp_rules_shard_embed_of_params_but_not_of_activations():
    import flax.linen as nn

    rules = list(partitioning.logical_axis_rules("fsdp"))
    assert nn.logical_to_mesh_axes(("embed", "mlp"), rules) == P("data", "model")
    # In an activation the data axis is already taken by the batch.
    assert nn.logical_to_mesh_axes(("batch", "length", "embed"), rules) == P("data", None, None)
    with pytest.raises(ValueError, match="unknown logical_axis_rules"):
        partitioning.logical_axis_rules("zero3")


def test_mesh_shape_fill_and_errors():
    n = len(jax.devices())
    mesh = partitioning.make_mesh((-1, 1))
    assert dict(mesh.shape) == {"data": n, "model": 1}
    assert partitioning._resolve_shape((-1, 2), 8) == (4, 2)
    assert partitioning._resolve_shape((2, -1, 2), 8) == (2, 2, 2)
    with pytest.raises(ValueError, match="does not divide"):
        partitioning._resolve_shape((-1, 3), 8)
    with pytest.raises(ValueError, match="more than one -1"):
        partitioning._resolve_shape((-1, -1), 8)
    with pytest.raises(ValueError, match="needs 6 devices"):
        partitioning._resolve_shape((3, 2), 8)


def test_state_specs_follow_params_into_the_optimizer_state():
    import optax

    cfg = get_preset("tiny")
    params = jax.tree_util.tree_map(
        lambda s: jax.ShapeDtypeStruct(s[0], np.float32),
        unflatten(param_specs(cfg)),
        is_leaf=lambda x: isinstance(x, tuple) and len(x) == 2 and isinstance(x[1], tuple))
    state = jax.eval_shape(optax.adamw(1e-3).init, params)
    specs = partitioning.state_logical_specs({"params": params, "opt": state}, cfg)
    wi = ("encoder", "layers_0", "mlp", "wi_0", "kernel")

    def get(tree, path):
        for k in path:
            tree = tree[k]
        return tree

    assert get(specs["params"], wi) == P("embed", "mlp")
    mu = specs["opt"][0].mu
    assert get(mu, wi) == P("embed", "mlp")
    assert specs["opt"][0].count == P()


def test_state_specs_of_an_adapter_run_come_from_the_same_table():
    """One `state_logical_specs` for full fine-tuning and adapters: a LoRA run's state holds
    only `lora/…` (and the frozen backbone its own tree); both take the table's axes."""
    import optax

    from flanrec.model.adapters import LoraConfig, all_param_specs, with_adapters

    cfg = with_adapters(get_preset("tiny"), lora=LoraConfig(rank=2, targets=("query", "wo")))
    shapes = {n: jax.ShapeDtypeStruct(shape, np.float32)
              for n, (shape, _) in all_param_specs(cfg).items()}
    lora = unflatten({n: v for n, v in shapes.items() if n.startswith("lora/")})["lora"]
    backbone = unflatten({n: v for n, v in shapes.items() if not n.startswith("lora/")})
    trainable = {"lora": lora}  # what peft.params.split keeps: the top-level key included
    state = {"params": trainable, "opt": jax.eval_shape(optax.adam(1e-3).init, trainable)}
    specs = partitioning.state_logical_specs(state, cfg)
    q = specs["params"]["lora"]["encoder"]["layers_0"]["attention"]["query"]
    assert q["lora_a"] == P("embed", "lora_rank") and q["lora_b"] == P("lora_rank", "joined_kv")
    wo = specs["opt"][0].nu["lora"]["decoder"]["layers_1"]["mlp"]["wo"]
    assert wo["lora_a"] == P("mlp", "lora_rank") and wo["lora_b"] == P("lora_rank", "embed")
    frozen = partitioning.state_logical_specs(backbone, cfg)
    assert frozen["token_embedder"]["embedding"] == P("vocab", "embed")
    assert partitioning.params_logical_specs(cfg)["lora"]["encoder"]["layers_0"]["attention"][
        "query"]["lora_a"] == P("embed", "lora_rank")


_EQUIVALENCE = r"""
import json, sys
import jax, numpy as np
from flanrec import partitioning
from flanrec.train import losses, optimizers
from flanrec.train import steps as trainer
from flanrec.model.config import get_preset
from flanrec.model.network import Transformer
from flanrec.model.params import flatten

out = sys.argv[1]
assert len(jax.devices()) == 8, jax.devices()
cfg = get_preset("tiny", dropout_rate=0.1, num_encoder_layers=1, num_decoder_layers=1)
model = Transformer(cfg)
rng = np.random.default_rng(0)
batches = []
for _ in range(5):
    tg = rng.integers(2, 128, (8, 6)).astype(np.int32)
    tg[:, -1] = 1
    tg[::3, 3:] = 0  # padding in some rows
    enc = rng.integers(2, 128, (8, 12)).astype(np.int32)
    enc[1::2, 9:] = 0
    dec = np.concatenate([np.zeros((8, 1), np.int32), tg[:, :-1]], 1)
    batches.append({"encoder_input_tokens": enc, "decoder_input_tokens": dec,
                    "decoder_target_tokens": tg})
batches = batches[:2] * 2 + batches[:1]  # revisit batches, so the loss visibly falls

configs = {"one_device": ((1, 1), jax.devices()[:1], "standard"),
           "data8": ((8, 1), None, "standard"),
           "data4_model2": ((4, 2), None, "standard"),
           "fsdp8": ((8, 1), None, "fsdp")}
report = {}
for name, (shape, devices, kind) in configs.items():
    mesh = partitioning.make_mesh(shape, ("data", "model"), devices)
    rules = partitioning.logical_axis_rules(kind)
    tx, sched = optimizers.make_optimizer(optimizers.adafactor,
                                          optimizers.constant_schedule(1e-2))
    sh = trainer.state_shardings(trainer.abstract_state(model, tx), cfg, mesh, rules)
    state = trainer.init_state(model, tx, jax.random.PRNGKey(0), sh, mesh, rules)
    bsh = partitioning.batch_sharding(mesh, rules)
    step = trainer.make_train_step(model, tx, sched, losses.LossConfig(), sh, bsh, mesh, rules)
    run_losses = []
    for b in batches:
        state, m = step(state, partitioning.host_to_global(b, bsh), jax.random.PRNGKey(7))
        run_losses.append(float(m["loss"]))
    emb = state.params["token_embedder"]["embedding"]
    wi = state.params["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]
    report[name] = {
        "losses": run_losses,
        "emb_spec": str(emb.sharding.spec), "wi_spec": str(wi.sharding.spec),
        "wi_shard_shape": list(wi.addressable_shards[0].data.shape),
        "emb_shard_shape": list(emb.addressable_shards[0].data.shape),
        "v_spec": str(state.opt_state[0].v["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]
                      .sharding.spec),
    }
    np.savez(f"{out}/{name}.npz", **flatten(jax.device_get(state.params)))
json.dump(report, open(f"{out}/report.json", "w"))
"""


@pytest.fixture(scope="module")
def equivalence(tmp_path_factory):
    out = tmp_path_factory.mktemp("equiv")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8 "
               "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true",
               JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", _EQUIVALENCE, str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((out / "report.json").read_text())
    params = {name: dict(np.load(out / f"{name}.npz")) for name in report}
    return report, params


@pytest.mark.slow
def test_same_losses_and_params_on_every_mesh(equivalence):
    report, params = equivalence
    ref = report["one_device"]["losses"]
    assert ref[4] < ref[2] < ref[0]  # it trains (steps 1, 3, 5 see the same batch)
    for name in ("data8", "data4_model2", "fsdp8"):
        np.testing.assert_allclose(report[name]["losses"], ref, rtol=1e-5, atol=1e-5,
                                   err_msg=name)
        for key, value in params["one_device"].items():
            np.testing.assert_allclose(params[name][key], value, rtol=1e-5, atol=1e-5,
                                       err_msg=f"{name}: {key}")


@pytest.mark.slow
def test_two_d_mesh_really_shards_the_large_params(equivalence):
    report, _ = equivalence
    two_d = report["data4_model2"]
    assert "model" in two_d["emb_spec"] and "model" in two_d["wi_spec"]
    assert two_d["wi_shard_shape"] == [32, 32]     # [embed=32, mlp=64/2]
    assert two_d["emb_shard_shape"] == [64, 32]    # [vocab=128/2, embed]
    assert "model" in two_d["v_spec"]              # optimizer state follows its parameter
    assert report["data8"]["wi_shard_shape"] == [32, 64]  # data parallel: replicated
    fsdp = report["fsdp8"]
    assert "data" in fsdp["wi_spec"] and fsdp["wi_shard_shape"] == [4, 64]
