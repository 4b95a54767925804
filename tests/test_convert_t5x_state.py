"""`convert --to t5x` writes T5X's whole Adafactor train state, so T5X's stock fine-tuning
(`RestoreCheckpointConfig(mode='specific')`) restores it: the layout against what
t5x/adafactor.py builds (hard-coded below), the trained moments carried over from a real
flanrec (Orbax, optax Adafactor) checkpoint, and — when T5X's source is available — a real
restore and one more update with T5X's own code."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
import tensorstore as ts
from flax import serialization

from flanrec.checkpoints import TrainCheckpointer
from flanrec.convert import cli
from flanrec.interop.t5x import write_t5x_checkpoint
from flanrec.interop.t5x_adafactor import AdafactorLayout, slot_shapes, stored_inline
from flanrec.model.config import get_preset
from flanrec.model.params import flatten, param_specs, unflatten
from flanrec.train import optimizers

TESTS = Path(__file__).resolve().parent

# What T5X's Adafactor (t5x/adafactor.py: `Adafactor.init_param_state` with
# `_factored_dims`; `derive_logical_axes` for where each slot is stored) holds for every
# Flan-T5-small parameter with its defaults (factored, min_dim_size_to_factor=128, no
# momentum): v_row / v_col drop the largest / second-largest axis in np.argsort order, an
# unfactored parameter keeps a full `v`, unused slots are zeros((1,)). Written out by hand
# from reading that file, not computed by our code.
_P = (1,)
FLAN_T5_SMALL = {  # suffix -> (v_row, v_col, v, m)
    "token_embedder/embedding": ((512,), (32128,), _P, _P),          # [32128, 512]
    "decoder/logits_dense/kernel": ((512,), (32128,), _P, _P),       # [512, 32128]
    "attention/query/kernel": ((384,), (512,), _P, _P),              # [512, 384]
    "attention/key/kernel": ((384,), (512,), _P, _P),
    "attention/value/kernel": ((384,), (512,), _P, _P),
    "attention/out/kernel": ((384,), (512,), _P, _P),                # [384, 512]
    "mlp/wi_0/kernel": ((512,), (1024,), _P, _P),                    # [512, 1024]
    "mlp/wi_1/kernel": ((512,), (1024,), _P, _P),
    "mlp/wo/kernel": ((512,), (1024,), _P, _P),                      # [1024, 512]
    "relpos_bias/rel_embedding": (_P, _P, (6, 32), _P),              # [6, 32]: 6 < 128
    "scale": (_P, _P, (512,), _P),                                   # RMSNorm scales
}


def _expected(name: str) -> tuple[tuple[int, ...], ...]:
    for suffix, shapes in FLAN_T5_SMALL.items():
        if name.endswith(suffix):
            return shapes
    raise AssertionError(f"no expectation for {name}")


def test_state_layout_is_t5x_adafactor_at_flan_t5_small():
    specs = param_specs(get_preset("flan-t5-small"))
    for name, (shape, _) in specs.items():
        got = slot_shapes(shape, AdafactorLayout())
        assert tuple(got[s] for s in ("v_row", "v_col", "v", "m")) == _expected(name), name
        with_momentum = slot_shapes(shape, AdafactorLayout(momentum=True))
        assert with_momentum["m"] == shape, name
    # A square kernel (Flan-T5 base: 768 x 768): np.argsort keeps axis order on ties.
    assert slot_shapes((768, 768), AdafactorLayout())["v_row"] == (768,)
    # Where T5X keeps each slot: v_row/v_col and (1,) placeholders in the msgpack file,
    # a full-size v or m in TensorStore (derive_logical_axes gives only those axes).
    assert stored_inline("v_row", (512,)) and stored_inline("v_col", (32128,))
    assert stored_inline("v", (1,)) and stored_inline("m", (1,))
    assert not stored_inline("v", (6, 32)) and not stored_inline("m", (512, 384))


# --------------------------------------------------------------------------------------------
# A real flanrec checkpoint: optax Adafactor trained a few updates, saved through Orbax.


def _train_and_save(model_dir: Path, *, min_dim: int = 128, adamw: bool = False,
                    steps: int = 2, seed: int = 0) -> tuple[dict, object]:
    cfg = get_preset("tiny")
    rng = np.random.default_rng(seed)
    params = unflatten({k: rng.standard_normal(s).astype(np.float32) * 0.1
                        for k, (s, _) in param_specs(cfg).items()})
    sched = optimizers.constant_schedule(0.01)
    tx = (optimizers.adamw(sched) if adamw else
          optimizers.adafactor(sched, min_dim_size_to_factor=min_dim))
    params = jax.tree.map(jax.numpy.asarray, params)
    opt = tx.init(params)
    update = jax.jit(tx.update)
    for _ in range(steps):
        grads = jax.tree.map(lambda p: jax.numpy.asarray(
            rng.standard_normal(p.shape).astype(np.float32)), params)
        updates, opt = update(grads, opt, params)
        params = optax.apply_updates(params, updates)
    ckpt = TrainCheckpointer(model_dir, async_save=False)
    ckpt.save(steps, params, opt, meta={"model_config": cfg.to_dict()}, force=True)
    ckpt.wait()
    ckpt.close()
    return jax.tree.map(np.asarray, params), jax.tree.map(np.asarray, opt)


def _read_t5x(ckpt: Path) -> tuple[dict, dict]:
    """(msgpack contents, name -> array of every optimizer slot), read as T5X reads them:
    flax msgpack, then TensorStore for the slots stored as specs."""
    contents = serialization.msgpack_restore((ckpt / "checkpoint").read_bytes())
    slots: dict[str, np.ndarray] = {}

    def walk(tree: dict, prefix: str) -> None:
        for k, v in tree.items():
            path = f"{prefix}/{k}" if prefix else k
            if isinstance(v, np.ndarray):  # inline in the msgpack
                slots[path] = v
            elif isinstance(v, dict) and "driver" in v:  # a TensorStore spec, relative path
                spec = dict(v, kvstore=dict(v["kvstore"], path=str(ckpt / v["kvstore"]["path"])))
                slots[path] = np.asarray(ts.open(spec, open=True).result().read().result())
            else:
                walk(v, path)

    walk(contents["optimizer"]["state"]["param_states"], "")
    return contents, slots


def test_cli_export_carries_the_trained_second_moments(tmp_path):
    params, opt = _train_and_save(tmp_path / "run")  # T5X's default factoring (128)
    assert cli.main(["--from", "flanrec", "--src", str(tmp_path / "run"), "--to", "t5x",
                     "--out", str(tmp_path / "t5x")]) == 0
    ckpt = tmp_path / "t5x" / "checkpoint_2"  # the flanrec checkpoint's own step
    contents, slots = _read_t5x(ckpt)
    state = contents["optimizer"]["state"]
    assert set(state) == {"step", "param_states"}
    assert state["step"].dtype == np.int32 and int(state["step"]) == 2
    flat = flatten(params)
    assert set(slots) == {f"{n}/{s}" for n in flat for s in ("v_row", "v_col", "v", "m")}
    v = flatten(opt[0].v)  # optax FactoredState: tiny is never factored at 128
    for name in flat:
        np.testing.assert_array_equal(slots[f"{name}/v"], v[name], err_msg=name)
        assert slots[f"{name}/v"].dtype == np.float32
        for s in ("v_row", "v_col", "m"):
            assert slots[f"{name}/{s}"].shape == (1,) and not slots[f"{name}/{s}"].any()
    assert np.any(slots["encoder/layers_0/mlp/wi_0/kernel/v"])  # really trained moments


def test_factored_moments_copied_and_mismatches_zeroed(tmp_path, caplog):
    params, opt = _train_and_save(tmp_path / "run", min_dim=16)
    layout = AdafactorLayout(min_dim_size_to_factor=16)
    from flanrec.checkpoints import load_optimizer_state

    step, stored = load_optimizer_state(tmp_path / "run")
    ckpt = write_t5x_checkpoint(params, tmp_path / "t5x", step, opt_state=stored, layout=layout)
    _, slots = _read_t5x(ckpt)
    state = opt[0]
    name = "encoder/layers_1/mlp/wo/kernel"  # [64, 32]: factored at 16
    assert slots[f"{name}/v_row"].shape == (32,) and slots[f"{name}/v_col"].shape == (64,)
    np.testing.assert_array_equal(slots[f"{name}/v_row"], flatten(state.v_row)[name])
    np.testing.assert_array_equal(slots[f"{name}/v_col"], flatten(state.v_col)[name])
    assert slots[f"{name}/v"].shape == (1,)
    norm = "decoder/decoder_norm/scale"  # rank 1: never factored
    np.testing.assert_array_equal(slots[f"{norm}/v"], flatten(state.v)[norm])
    # Trained with min_dim 16 but exported for T5X's default 128: the factored moments do
    # not fit a full `v`, so those slots start from zero, and the export says so.
    with caplog.at_level(logging.WARNING, logger="flanrec.interop.t5x"):
        ckpt = write_t5x_checkpoint(params, tmp_path / "t5x128", step, opt_state=stored)
    _, slots = _read_t5x(ckpt)
    assert slots[f"{name}/v"].shape == (64, 32) and not slots[f"{name}/v"].any()
    np.testing.assert_array_equal(slots[f"{norm}/v"], flatten(state.v)[norm])
    assert "did not fit T5X's layout and start from zero" in caplog.text


def test_adamw_run_exports_zero_moments(tmp_path):
    params, _ = _train_and_save(tmp_path / "run", adamw=True)
    from flanrec.checkpoints import load_optimizer_state

    step, stored = load_optimizer_state(tmp_path / "run")
    _, slots = _read_t5x(write_t5x_checkpoint(params, tmp_path / "t5x", step, opt_state=stored))
    assert slots["encoder/layers_0/mlp/wi_0/kernel/v"].shape == (32, 64)
    assert not any(v.any() for v in slots.values())


# --------------------------------------------------------------------------------------------
# T5X's own restore (runs where T5X's source is available; see tests/t5x_restore_check.py)


def _t5x_path() -> str | None:
    """FLANREC_T5X_PATH: PYTHONPATH entries holding T5X's source (and cached_property)."""
    path = os.environ.get("FLANREC_T5X_PATH")
    if not path:
        return None
    if not any(Path(p, "t5x", "checkpoints.py").is_file() for p in path.split(os.pathsep)):
        return None
    return path


def _stubs(root: Path) -> Path:
    """Empty stand-ins for two packages T5X imports but its Adafactor path never uses."""
    body = ('def __getattr__(name):\n    cls = type(name, (), {})\n'
            '    globals()[name] = cls\n    return cls\n')
    for pkg, mods in (("jestimator", ("amos", "amos_helper")), ("airio", ("core",))):
        (root / pkg).mkdir(parents=True, exist_ok=True)
        (root / pkg / "__init__.py").write_text("")
        for m in mods:
            (root / pkg / f"{m}.py").write_text(body)
    return root


@pytest.mark.slow
@pytest.mark.skipif(_t5x_path() is None, reason="T5X source not available: set "
                    "FLANREC_T5X_PATH to its checkout (+ cached_property) to run")
def test_t5x_restores_the_export_with_its_own_code(tmp_path):
    path = os.pathsep.join([_t5x_path(), str(_stubs(tmp_path / "stubs"))])
    env = dict(os.environ, PYTHONPATH=path, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    _train_and_save(tmp_path / "run", min_dim=16, steps=3)
    from flanrec.checkpoints import load_optimizer_state, load_params

    step, stored = load_optimizer_state(tmp_path / "run")
    params = load_params(tmp_path / "run")[1]
    ckpt = write_t5x_checkpoint(params, tmp_path / "t5x", step, opt_state=stored,
                                layout=AdafactorLayout(min_dim_size_to_factor=16))
    cases = [(ckpt, tmp_path / "run", "16")]
    # The CLI at T5X's defaults, from a params-only (HF-converted) checkpoint: zero moments.
    assert cli.main(["--from", "flanrec", "--src", str(tmp_path / "run"), "--to", "flanrec",
                     "--out", str(tmp_path / "params_only")]) == 0
    assert cli.main(["--from", "flanrec", "--src", str(tmp_path / "params_only"), "--to",
                     "t5x", "--out", str(tmp_path / "t5x0")]) == 0
    cases.append((tmp_path / "t5x0" / "checkpoint_0", tmp_path / "params_only", "128"))
    for t5x_ckpt, source, min_dim in cases:
        proc = subprocess.run(
            [sys.executable, str(TESTS / "t5x_restore_check.py"), str(t5x_ckpt), str(source),
             "--min_dim", min_dim], env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-4000:]
        assert "restored step" in proc.stdout and proc.stdout.strip().endswith("OK")
