"""flanrec's Orbax checkpoints: real saves and restores on disk, half-written checkpoints,
keep-N, async, params-only checkpoints, and restores into shardings of a 4-device mesh."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp  # noqa: E402
import numpy as np
import optax  # noqa: E402
import pytest

from flanrec import __version__  # noqa: E402
from flanrec.checkpoints import (  # noqa: E402
    TrainCheckpointer,
    complete_steps,
    is_complete,
    latest_complete_step,
    load_params,
    resolve_checkpoint,
    restore_params,
    save_params_checkpoint,
)
from flanrec.model.config import get_preset  # noqa: E402
from flanrec.model.params import flatten, param_specs, unflatten  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CFG = get_preset("tiny")


def random_params(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return unflatten({k: rng.standard_normal(shape).astype(np.float32)
                      for k, (shape, _) in param_specs(CFG).items()})


def abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                        tree)


def assert_tree_equal(a, b) -> None:
    fa, fb = flatten(a), flatten(b)
    assert set(fa) == set(fb)
    for k in fa:
        np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=k)


@pytest.fixture(scope="module")
def state():
    params = jax.tree.map(jnp.asarray, random_params())
    tx = optax.adafactor(1e-3)
    opt_state = jax.jit(tx.init)(params)
    # One real update so the optimizer state is not all zeros.
    grads = jax.tree.map(lambda p: jnp.ones_like(p) * 0.1, params)
    _, opt_state = jax.jit(tx.update)(grads, opt_state, params)
    return params, opt_state


def meta(step: int) -> dict:
    return {"model_config": CFG, "rng": jax.random.key(step),
            "data_position": {"train": step * 8}}


def test_round_trip(tmp_path, state):
    params, opt_state = state
    with TrainCheckpointer(tmp_path, async_save=False) as ckpt:
        assert ckpt.latest_step() is None
        assert ckpt.save(10, params, opt_state, meta(10))
        p, o, m = ckpt.restore(abstract_params=abstract(params),
                               abstract_opt_state=abstract(opt_state))
    assert_tree_equal(p, params)
    assert jax.tree.structure(o) == jax.tree.structure(opt_state)
    for x, y in zip(jax.tree.leaves(o), jax.tree.leaves(opt_state), strict=True):
        np.testing.assert_array_equal(x, y)
    assert m["step"] == 10 and m["version"] == __version__
    assert m["model_config"] == CFG.to_dict()
    assert m["rng"] == [int(v) for v in jax.random.key_data(jax.random.key(10))]
    assert m["data_position"] == {"train": 80}
    assert {"meta", "opt_state", "params"} <= set(os.listdir(tmp_path / "checkpoint_10"))


def test_keep_n_and_interval(tmp_path, state):
    params, opt_state = state
    with TrainCheckpointer(tmp_path, max_to_keep=2, async_save=False,
                           save_interval_steps=2) as ckpt:
        saved = {s: ckpt.save(s, params, None, meta(s)) for s in range(1, 7)}
        # Orbax always saves the first step it sees, then every save_interval_steps.
        assert saved == {1: True, 2: True, 3: False, 4: True, 5: False, 6: True}
        assert ckpt.save(7, params, opt_state, meta(7), force=True)
        assert not ckpt.save(7, params, opt_state, meta(7), force=True)  # once per step
        assert ckpt.all_steps() == [6, 7]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_6", "checkpoint_7"]


def test_latest_step_counts_only_complete(tmp_path, state):
    params, opt_state = state
    other = jax.tree.map(lambda x: x + 1, params)
    with TrainCheckpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(1, other, opt_state, meta(1))
        ckpt.save(2, params, opt_state, meta(2))
    # A save killed half-way: all items there, but Orbax never committed it.
    half = tmp_path / "checkpoint_5"
    shutil.copytree(tmp_path / "checkpoint_2", half)
    (half / "commit_success.txt").unlink()
    (half / "_CHECKPOINT_METADATA").unlink()
    shutil.rmtree(half / "opt_state")
    (tmp_path / "checkpoint_7.orbax-checkpoint-tmp-1234").mkdir()  # Orbax temp dir
    (tmp_path / "checkpoint_9").mkdir()  # empty dir
    assert not is_complete(half) and is_complete(tmp_path / "checkpoint_2")
    assert complete_steps(tmp_path) == [1, 2]
    assert latest_complete_step(tmp_path) == 2
    cfg, got = load_params(tmp_path)
    assert cfg == CFG
    assert_tree_equal(got, params)
    with pytest.raises(ValueError, match="incomplete checkpoint"):
        load_params(half)

    # The writer moves the half checkpoints aside (nothing deleted) and can save step 5 again.
    with TrainCheckpointer(tmp_path, async_save=False) as ckpt:
        assert ckpt.latest_step() == 2
        assert len(list(tmp_path.glob("checkpoint_5.incomplete-*"))) == 1
        p, o, m = ckpt.restore(abstract_params=abstract(params))
        assert o is None and m["step"] == 2
        assert_tree_equal(p, params)
        assert ckpt.save(5, other, opt_state, meta(5))
        assert ckpt.latest_step() == 5
        with pytest.raises(FileNotFoundError, match="step 4"):
            ckpt.restore(4, abstract_params=abstract(params))


def test_async_save_then_wait(tmp_path, state):
    params, opt_state = state
    ckpt = TrainCheckpointer(tmp_path, async_save=True)
    try:
        assert ckpt.save(3, params, opt_state, meta(3))
        # Whatever the timing, an in-flight save is never reported as a step to resume from.
        assert ckpt.latest_step() in (None, 3)
        if ckpt.latest_step() is None:
            assert not (tmp_path / "checkpoint_3").exists() or not is_complete(
                tmp_path / "checkpoint_3")
        ckpt.wait()
        assert ckpt.latest_step() == 3 and is_complete(tmp_path / "checkpoint_3")
        p, o, _ = ckpt.restore(abstract_params=abstract(params),
                               abstract_opt_state=abstract(opt_state))
        assert_tree_equal(p, params)
    finally:
        ckpt.close()


def test_restore_refusals(tmp_path, state):
    params, opt_state = state
    with TrainCheckpointer(tmp_path, async_save=False) as ckpt:
        with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
            ckpt.restore(abstract_params=abstract(params))
        ckpt.save(1, params, None, meta(1))
        with pytest.raises(ValueError, match="no 'opt_state' item"):
            ckpt.restore(abstract_params=abstract(params), abstract_opt_state=abstract(opt_state))
        wrong = abstract(params)
        wrong["decoder"]["logits_dense"]["kernel"] = jax.ShapeDtypeStruct((32, 64), jnp.float32)
        with pytest.raises(ValueError, match=r"decoder/logits_dense/kernel: checkpoint "
                                             r"\(32, 128\) vs expected \(32, 64\)"):
            ckpt.restore(abstract_params=wrong)
        with pytest.raises(TypeError, match="JSON"):
            ckpt.save(2, params, None, {"data_position": object()})
        assert ckpt.latest_step() == 1


def test_params_only_checkpoint_and_all_load_paths(tmp_path, state):
    params, opt_state = state
    host = random_params(seed=4)
    out = save_params_checkpoint(CFG, host, tmp_path / "params_only")
    assert sorted(p.name for p in Path(out).iterdir() if p.is_dir()) == ["meta", "params"]
    with TrainCheckpointer(tmp_path / "model", async_save=False) as ckpt:
        ckpt.save(4, params, opt_state, meta(4))
        ckpt.save(6, host, opt_state, meta(6))
    for path in (tmp_path / "params_only", tmp_path / "model",
                 tmp_path / "model" / "checkpoint_6"):
        cfg, got = load_params(path)
        assert cfg == CFG, path
        assert all(isinstance(v, np.ndarray) and v.dtype == np.float32
                   for v in flatten(got).values())
        assert_tree_equal(got, host)
    cfg, got = load_params(tmp_path / "model" / "checkpoint_4")
    assert_tree_equal(got, params)
    cfg, sharded = restore_params(tmp_path / "params_only", abstract(params))
    assert cfg == CFG and isinstance(sharded["token_embedder"]["embedding"], jax.Array)
    assert_tree_equal(sharded, host)

    with pytest.raises(FileExistsError, match="not empty"):
        save_params_checkpoint(CFG, host, tmp_path / "params_only")
    save_params_checkpoint(CFG, params, tmp_path / "params_only", overwrite=True)
    assert_tree_equal(load_params(tmp_path / "params_only")[1], params)
    bad = flatten(host)
    del bad["decoder/logits_dense/kernel"]
    with pytest.raises(ValueError, match="missing parameters.*logits_dense"):
        save_params_checkpoint(CFG, unflatten(bad), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_load_params_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such flanrec checkpoint"):
        load_params(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a flanrec checkpoint"):
        load_params(tmp_path / "empty")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="Hugging Face"):
        load_params(tmp_path / "hf")
    (tmp_path / "t5x").mkdir()
    (tmp_path / "t5x" / "checkpoint").write_bytes(b"")
    with pytest.raises(ValueError, match="T5X"):
        resolve_checkpoint(tmp_path / "t5x")
    (tmp_path / "m" / "checkpoint_3").mkdir(parents=True)
    with pytest.raises(ValueError, match="no complete checkpoint"):
        load_params(tmp_path / "m")


_SHARDED_SCRIPT = textwrap.dedent("""
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from flanrec.checkpoints import TrainCheckpointer, restore_params, save_params_checkpoint
    from flanrec.model.params import flatten, param_specs, unflatten
    from flanrec.model.config import get_preset

    assert jax.device_count() == 4, jax.devices()
    cfg = get_preset("tiny")
    mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ("data", "model"))
    rules = {"vocab": "model", "mlp": "model", "joined_kv": "model", "heads": "model",
             "embed": "data"}
    specs = param_specs(cfg)
    rng = np.random.default_rng(0)
    host = {k: rng.standard_normal(s).astype(np.float32) for k, (s, _) in specs.items()}

    def sharding(name, rules):
        return NamedSharding(mesh, P(*[rules.get(a) for a in specs[name][1]]))

    saved_rules = {"vocab": "model", "embed": None, "mlp": "data"}  # differs from rules
    params = unflatten({k: jax.device_put(v, sharding(k, saved_rules)) for k, v in host.items()})
    tx = optax.adafactor(1e-3)
    opt = jax.jit(tx.init)(params)
    ckpt = TrainCheckpointer(sys.argv[1], async_save=True)
    ckpt.save(7, params, opt, {"model_config": cfg, "rng": [1, 2]})
    ckpt.wait()
    want = unflatten({k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding(k, rules))
                      for k, v in host.items()})
    abs_opt = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                          sharding=NamedSharding(mesh, P())), opt)
    p, o, meta = ckpt.restore(abstract_params=want, abstract_opt_state=abs_opt)
    ckpt.close()
    for k, v in flatten(p).items():
        assert v.sharding == flatten(want)[k].sharding, (k, v.sharding)
        np.testing.assert_array_equal(np.asarray(v), host[k])
    emb = flatten(p)["token_embedder/embedding"]
    assert len({s.device for s in emb.addressable_shards}) == 4
    assert emb.addressable_shards[0].data.shape == (64, 16), emb.addressable_shards[0].data.shape
    for a, b in zip(jax.tree.leaves(o), jax.tree.leaves(opt), strict=True):
        assert a.sharding == NamedSharding(mesh, P())
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert meta["step"] == 7
    save_params_checkpoint(cfg, unflatten(host), sys.argv[1] + "_params")
    _, p2 = restore_params(sys.argv[1] + "_params", want)
    for k, v in flatten(p2).items():
        assert v.sharding == flatten(want)[k].sharding
        np.testing.assert_array_equal(np.asarray(v), host[k])
    print("SHARDED_OK")
""")


def _run(script: str, *args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    return subprocess.run([sys.executable, "-c", script, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_restore_into_shardings_on_4_fake_devices(tmp_path):
    proc = _run(_SHARDED_SCRIPT, str(tmp_path / "model"))
    assert "SHARDED_OK" in proc.stdout, proc.stderr[-4000:]


_MULTIPROCESS_SCRIPT = textwrap.dedent("""
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    import jax, numpy as np
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    pid, port, model_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                               process_id=pid)
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from flanrec.checkpoints import TrainCheckpointer, load_params
    from flanrec.model.params import flatten, param_specs, unflatten
    from flanrec.model.config import get_preset

    assert jax.device_count() == 4 and jax.local_device_count() == 2
    cfg = get_preset("tiny")
    mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ("data", "model"))
    specs = param_specs(cfg)
    rng = np.random.default_rng(0)  # same numbers on both hosts
    host = {k: rng.standard_normal(s).astype(np.float32) for k, (s, _) in specs.items()}

    def sharding(name, rules):
        return NamedSharding(mesh, P(*[rules.get(a) for a in specs[name][1]]))

    save_rules = {"vocab": "data", "embed": "model"}
    load_rules = {"vocab": "model", "mlp": "data"}
    params = unflatten({k: jax.make_array_from_callback(v.shape, sharding(k, save_rules),
                                                        lambda idx, v=v: v[idx])
                        for k, v in host.items()})
    ckpt = TrainCheckpointer(model_dir, async_save=True, max_to_keep=1)
    for step in (1, 2):
        ckpt.save(step, params, None, {"model_config": cfg, "data_position": {"host": pid}})
    ckpt.wait()
    assert ckpt.latest_step() == 2, ckpt.latest_step()
    want = unflatten({k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding(k, load_rules))
                      for k, v in host.items()})
    p, _, meta = ckpt.restore(abstract_params=want)
    ckpt.close()
    for k, v in flatten(p).items():
        assert v.sharding == flatten(want)[k].sharding
        for shard in v.addressable_shards:
            np.testing.assert_array_equal(np.asarray(shard.data), host[k][shard.index])
    assert meta["step"] == 2 and meta["data_position"] == {"host": 0}, meta  # primary wrote it
    print(f"MULTIPROCESS_OK {pid}")
""")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _save_restore_pair(model_dir: Path, env: dict[str, str], timeout: float
                       ) -> list[tuple[str, str]] | str:
    """Run the two processes; their (stdout, stderr), or why they did not finish."""
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, "-c", _MULTIPROCESS_SCRIPT, str(i), port,
                               str(model_dir)], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=timeout))
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        tails = [p.communicate()[1][-2000:] for p in procs]
        return f"timed out after {timeout} s; stderr tails: {tails}"
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return outs


def test_multiprocess_save_restore(tmp_path):
    """Two real jax.distributed processes (gloo) share one MODEL_DIR: each writes its shards,
    Orbax commits once, the primary host's meta is the one stored.

    A hang gets one more try in a fresh dir on a fresh port: once in ~6 full-suite runs on a
    loaded 2-core machine, Orbax's async save-finalize thread failed in process 0 and the
    pair waited on each other (never reproduced alone in 6 runs); a second hang fails with
    both processes' stderr."""
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    model_dir = tmp_path / "model"
    outs = _save_restore_pair(model_dir, env, timeout=150)
    if isinstance(outs, str):
        model_dir = tmp_path / "model_retry"
        outs = _save_restore_pair(model_dir, env, timeout=150)
        assert not isinstance(outs, str), outs
    for i, (out, err) in enumerate(outs):
        assert f"MULTIPROCESS_OK {i}" in out, err[-4000:]
    assert sorted(p.name for p in model_dir.iterdir()) == ["checkpoint_2"]
    cfg, got = load_params(model_dir)
    assert cfg == CFG


def test_relative_model_dir_saves_async_and_loads(tmp_path, state, monkeypatch):
    """`--gin.MODEL_DIR=runs/x` is how users type it; Orbax's writer refuses relative paths,
    so a relative MODEL_DIR must be resolved before Orbax sees it (async save included)."""
    params, opt_state = state
    monkeypatch.chdir(tmp_path)
    with TrainCheckpointer("runs/rel", async_save=True) as ckpt:
        assert ckpt.save(3, params, opt_state, meta(3))
        ckpt.wait()
        assert ckpt.latest_step() == 3
    assert is_complete(tmp_path / "runs/rel/checkpoint_3")
    _, loaded = load_params("runs/rel")
    assert_tree_equal(loaded, params)
    out = save_params_checkpoint(CFG, random_params(1), "params_only")
    assert Path(out).is_absolute()
    assert_tree_equal(load_params("params_only")[1], random_params(1))
