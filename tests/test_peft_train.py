"""Training with a frozen backbone: the trainer API in-process (backbone bitwise unchanged,
optimizer state of adapters only), and `python -m flanrec.train` with TUNING=prompt / lora
on a real seqio task (small adapter checkpoints, exact resume, loading, LoRA merge + export).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
import train_fixtures as tfx
from hf_fixtures import random_params

from flanrec import api, checkpoints, partitioning
from flanrec.checkpoints import read_adapters
from flanrec.model import Transformer, get_preset
from flanrec.model.adapters import LoraConfig, PromptConfig, adapter_specs, with_adapters
from flanrec.model.params import count_params, flatten, unflatten
from flanrec.peft import params as peft_params
from flanrec.train import losses, optimizers
from flanrec.train import steps as trainer

# One layer per stack (every block kind is still there) halves XLA compile time.
TINY = get_preset("tiny", dropout_rate=0.1, num_encoder_layers=1, num_decoder_layers=1)
ONE_LAYER = ("--gin_bindings=T5Config.num_encoder_layers = 1",
             "--gin_bindings=T5Config.num_decoder_layers = 1")


def _batch(rng: np.random.Generator, n: int = 4) -> dict[str, np.ndarray]:
    tg = rng.integers(2, 128, (n, 6)).astype(np.int32)
    tg[:, 4:] = 0
    enc = rng.integers(2, 128, (n, 9)).astype(np.int32)
    enc[1, 5:] = 0
    return {"encoder_input_tokens": enc, "decoder_target_tokens": tg,
            "decoder_input_tokens": np.concatenate([np.zeros((n, 1), np.int32), tg[:, :-1]], 1)}


@pytest.mark.parametrize("tuning", ["prompt", "lora"])
def test_backbone_is_bitwise_frozen_and_optimizer_state_holds_only_adapters(tuning):
    cfg = (with_adapters(TINY, PromptConfig(length=4, init="vocab")) if tuning == "prompt"
           else with_adapters(TINY, lora=LoraConfig(rank=2, targets=("query", "value", "wo"))))
    model = Transformer(cfg)
    mesh = partitioning.make_mesh((1, 1), devices=jax.devices()[:1])
    rules = partitioning.logical_axis_rules()
    tx, sched = optimizers.make_optimizer(optimizers.adamw, optimizers.constant_schedule(0.05))
    abstract = trainer.abstract_state(model, tx, tuning)
    sh = trainer.state_shardings(abstract, cfg, mesh, rules)
    fsh = trainer.frozen_shardings(trainer.abstract_frozen(model, tuning), cfg, mesh, rules)
    backbone = random_params(TINY, seed=2)
    state, frozen = trainer.init_adapted_state(model, tx, jax.random.PRNGKey(0), sh, fsh, mesh,
                                               rules, backbone, tuning)
    bsh = partitioning.batch_sharding(mesh, rules)
    step = trainer.make_train_step(model, tx, sched, losses.LossConfig(), sh, bsh, mesh, rules,
                                   frozen_shardings=fsh)
    adapters0 = jax.device_get(state.params)
    if tuning == "prompt":  # 'vocab' init: rows of the backbone's embedding table
        table = backbone["token_embedder"]["embedding"]
        for row in adapters0["prompt"]["all"]:
            assert np.any(np.all(table == row, axis=1))
    rng = np.random.default_rng(0)
    losses_seen = []
    for _ in range(4):
        state, m = step(state, partitioning.host_to_global(_batch(rng), bsh),
                        jax.random.PRNGKey(1), frozen)
        losses_seen.append(float(m["loss"]))
    after = flatten(jax.device_get(frozen))
    for name, value in flatten(backbone).items():
        assert np.array_equal(after[name], value), f"backbone {name} changed"
    trained = flatten(jax.device_get(state.params))
    assert set(trained) == set(adapter_specs(cfg))
    assert any(not np.array_equal(trained[k], v)
               for k, v in flatten(adapters0).items())
    assert all(np.isfinite(losses_seen))
    # Optimizer state: AdamW's two moments of the adapters, nothing backbone-sized.
    opt_leaves = jax.tree_util.tree_leaves_with_path(jax.device_get(state.opt_state))
    adapter_names = {tuple(k.split("/")) for k in adapter_specs(cfg)}
    n_adapter = peft_params.count(state.params)
    for path, leaf in opt_leaves:
        keys = tuple(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
        if np.size(leaf) > 1:
            assert any(keys[-len(n):] == n for n in adapter_names), keys
    assert sum(np.size(x) for _, x in opt_leaves) <= 2 * n_adapter + 4
    assert n_adapter < 0.05 * count_params(TINY)


def test_masked_optimizer_keeps_no_state_for_frozen_leaves():
    cfg = with_adapters(TINY, lora=LoraConfig(rank=2))
    params = {**random_params(TINY), **{k: jax.tree.map(np.zeros_like, v) for k, v in
                                        unflatten({n: np.ones(s, np.float32) for n, (s, _)
                                                          in adapter_specs(cfg).items()}).items()}}
    tx = peft_params.masked_optimizer(optax.adam(0.1), params, "lora")
    opt = tx.init(params)
    sizes = sum(np.size(x) for x in jax.tree.leaves(opt))
    assert sizes <= 2 * peft_params.count(params["lora"]) + 4
    grads = jax.tree.map(np.ones_like, params)
    updates, _ = tx.update(grads, opt, params)
    assert all(not np.any(u) for u in jax.tree.leaves({k: v for k, v in updates.items()
                                                      if k != "lora"}))
    assert all(np.any(u) for u in jax.tree.leaves(updates["lora"]))


# ------------------------------------------------------------ python -m flanrec.train runs
@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("peft")
    task = tfx.make_task(root / "task")
    backbone = root / "backbone"
    checkpoints.save_params_checkpoint(TINY, random_params(TINY, seed=5), backbone)
    sys.path.insert(0, task["dir"])  # in-process runs import the task module
    yield {"root": root, "task": task, "backbone": backbone, "cache": root / "jax_cache"}
    sys.path.remove(task["dir"])


def _run(setup, name: str, steps: int, overlay: str, *extra: str) -> str:
    args = tfx.train_args(setup["task"], setup["root"] / name, steps=steps, batch=8, extra=(
        f"--gin_file=gin/runs/{overlay}.gin",
        f"--gin.INITIAL_CHECKPOINT_PATH={setup['backbone']}", "--gin.CHECKPOINT_PERIOD=2",
        *ONE_LAYER, *extra))
    proc = tfx.run_train(args, tfx.subprocess_env(setup["task"], 1, setup["cache"]),
                         timeout=600)  # generous: CI machines are shared
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


@pytest.mark.slow
def test_prompt_run_writes_small_checkpoints_and_resumes_exactly(setup, capsys):
    extra = ("--gin.PROMPT_LENGTH=5", "--gin.LEARNING_RATE=0.3")
    out = _run(setup, "interrupted", 4, "prompt_tuning", *extra)
    assert "TUNING=prompt: 160 trainable parameters" in out
    ckpt = setup["root"] / "interrupted" / "checkpoint_4"
    cfg, adapters, meta = read_adapters(ckpt)
    assert list(flatten(adapters)) == ["prompt/all"]
    assert adapters["prompt"]["all"].shape == (5, 32)
    assert meta["tuning"] == "prompt" and meta["backbone"] == str(setup["backbone"])
    assert meta["peft"]["prompt"]["length"] == 5 and meta["peft"]["lora"] is None
    # Adapters + their optimizer state + Orbax's bookkeeping: far below the backbone.
    assert _dir_bytes(ckpt) < 300_000
    assert _dir_bytes(ckpt / "params") < _dir_bytes(setup["backbone"] / "params") / 4
    out = _run(setup, "interrupted", 6, "prompt_tuning", *extra)
    assert "resumed from" in out and "at step 4" in out
    _run(setup, "straight", 6, "prompt_tuning", *extra)
    _, resumed, _ = read_adapters(setup["root"] / "interrupted")
    _, straight, _ = read_adapters(setup["root"] / "straight")
    np.testing.assert_array_equal(resumed["prompt"]["all"], straight["prompt"]["all"])
    assert not np.array_equal(resumed["prompt"]["all"], adapters["prompt"]["all"])
    # Loading: backbone (from the pointer, unchanged) + prompt = a usable model.
    model = api.load(setup["root"] / "interrupted")
    assert model.config.prompt.length == 5
    backbone = flatten(checkpoints.load_params(setup["backbone"])[1])
    for name, value in backbone.items():
        assert np.array_equal(np.asarray(flatten(model.params)[name]), value), name
    enc = np.array([[5, 9, 14, 1, 0]])
    plain = api.load(setup["backbone"])
    dec = np.array([[0, 7, 3]])
    assert np.max(np.abs(model.logits(enc, dec) - plain.logits(enc, dec))) > 1e-3
    # A plain T5 checkpoint has no place for a soft prompt: export is refused by name.
    from flanrec.convert.cli import main as convert_main

    assert convert_main(["--from", "flanrec", "--src", str(setup["root"] / "interrupted"),
                         "--out", str(setup["root"] / "p-hf"), "--to", "hf"]) == 2
    assert "soft-prompt" in capsys.readouterr().err


@pytest.mark.slow
def test_lora_run_merges_and_exports_to_hf(setup, capsys):
    from flanrec.convert.cli import main as convert_main

    _run(setup, "lora", 2, "lora", "--gin.LORA_RANK=2", "--gin.LEARNING_RATE=0.01")
    run = setup["root"] / "lora"
    cfg, adapters, meta = read_adapters(run)
    assert meta["tuning"] == "lora" and cfg.lora.rank == 2
    assert all(k.startswith("lora/") for k in flatten(adapters))
    assert any(np.any(v) for k, v in flatten(adapters).items() if k.endswith("lora_b"))
    # Unmerged (LoRA applied in the forward pass) vs merged and exported to HF and re-read.
    unmerged = api.load(run, merge_lora=False)
    assert unmerged.config.lora.rank == 2
    hf = setup["root"] / "lora-hf"
    assert convert_main(["--from", "flanrec", "--src", str(run), "--out", str(hf / "x")]) == 2
    assert "--merge_lora" in capsys.readouterr().err
    assert convert_main(["--from", "flanrec", "--src", str(run), "--merge_lora", "--to", "hf",
                         "--out", str(hf)]) == 0
    assert json.loads((hf / "config.json").read_text())["d_model"] == 32
    exported = api.load(hf)
    enc = np.array([[5, 9, 14, 1, 0], [8, 1, 0, 0, 0]])
    dec = np.array([[0, 7, 3], [0, 2, 2]])
    np.testing.assert_allclose(exported.logits(enc, dec), unmerged.logits(enc, dec),
                               atol=1e-5, rtol=1e-5)


def test_bad_settings_fail_before_compiling(setup):
    from flanrec.train import cli as train

    base = tfx.train_args(setup["task"], setup["root"] / "bad", steps=2, batch=8)
    cases = [
        (["--gin_file=gin/runs/prompt_tuning.gin"], "INITIAL_CHECKPOINT_PATH"),
        (["--gin_file=gin/runs/prompt_tuning.gin", f"--gin.INITIAL_CHECKPOINT_PATH="
          f"{setup['backbone']}", "--gin.PACK=True"], "PACK = False"),
        (["--gin_file=gin/runs/lora.gin", "--gin.TUNING='adapter'",
          f"--gin.INITIAL_CHECKPOINT_PATH={setup['backbone']}"], "TUNING must be one of"),
    ]
    import gin

    for extra, message in cases:
        try:
            with pytest.raises(ValueError, match=message):
                train.cli([*base[:-1], *extra])
        finally:
            gin.clear_config()


_LORA_MESH = r"""
import json, sys
import jax, numpy as np
from flanrec import partitioning
from flanrec.train import losses, optimizers
from flanrec.train import steps as trainer
from flanrec.model.config import get_preset
from flanrec.model.network import Transformer
from flanrec.model.adapters import LoraConfig, with_adapters
sys.path.insert(0, "tests")
from hf_fixtures import random_params

base = get_preset("tiny", dropout_rate=0.0, num_encoder_layers=1, num_decoder_layers=1)
cfg = with_adapters(base, lora=LoraConfig(rank=2, targets=("query", "out")))
model = Transformer(cfg)
rng = np.random.default_rng(0)
tg = rng.integers(2, 128, (8, 6)).astype(np.int32)
batch = {"encoder_input_tokens": rng.integers(2, 128, (8, 10)).astype(np.int32),
         "decoder_target_tokens": tg,
         "decoder_input_tokens": np.concatenate([np.zeros((8, 1), np.int32), tg[:, :-1]], 1)}
report = {}
for name, shape, devices in (("one", (1, 1), jax.devices()[:1]), ("d4m2", (4, 2), None)):
    mesh = partitioning.make_mesh(shape, ("data", "model"), devices)
    rules = partitioning.logical_axis_rules()
    tx, sched = optimizers.make_optimizer(optimizers.adamw, optimizers.constant_schedule(0.05))
    abstract = trainer.abstract_state(model, tx, "lora")
    sh = trainer.state_shardings(abstract, cfg, mesh, rules)
    fsh = trainer.frozen_shardings(trainer.abstract_frozen(model, "lora"), cfg, mesh, rules)
    state, frozen = trainer.init_adapted_state(model, tx, jax.random.PRNGKey(0), sh, fsh, mesh,
                                               rules, random_params(base, seed=2), "lora")
    bsh = partitioning.batch_sharding(mesh, rules)
    step = trainer.make_train_step(model, tx, sched, losses.LossConfig(), sh, bsh, mesh, rules,
                                   frozen_shardings=fsh)
    seen = []
    for _ in range(3):
        state, m = step(state, partitioning.host_to_global(batch, bsh), jax.random.PRNGKey(1),
                        frozen)
        seen.append(float(m["loss"]))
    q = state.params["lora"]["encoder"]["layers_0"]["attention"]["query"]
    o = state.params["lora"]["encoder"]["layers_0"]["attention"]["out"]
    kernel = frozen["encoder"]["layers_0"]["attention"]["query"]["kernel"]
    mu = state.opt_state[0].mu["lora"]["encoder"]["layers_0"]["attention"]["query"]["lora_b"]
    report[name] = {"losses": seen, "q_b": list(q["lora_b"].sharding.spec),
                    "o_a": list(o["lora_a"].sharding.spec), "kernel": list(kernel.sharding.spec),
                    "mu_q_b": list(mu.sharding.spec),
                    "b": np.asarray(q["lora_b"]).tolist()}
print("REPORT" + json.dumps(report))
"""


@pytest.mark.slow
def test_lora_adapters_are_partitioned_like_their_kernels(tmp_path):
    """On 8 fake devices, data=4 × model=2: B of a query adapter is split over `model` like
    the query kernel's columns, A of an out adapter like the out kernel's rows (and AdamW's
    moments follow), and the run equals the single-device one."""
    import subprocess

    env = tfx.subprocess_env({"dir": str(tmp_path)}, devices=8)
    proc = subprocess.run([sys.executable, "-c", _LORA_MESH], cwd=tfx.REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.split("REPORT", 1)[1])
    one, split = report["one"], report["d4m2"]
    assert split["kernel"] == [None, "model"]
    assert split["q_b"] == [None, "model"]
    assert split["mu_q_b"] == [None, "model"]
    assert split["o_a"] == ["model", None]
    np.testing.assert_allclose(split["losses"], one["losses"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(split["b"], one["b"], rtol=1e-5, atol=1e-5)
    assert one["losses"][-1] < one["losses"][0]
