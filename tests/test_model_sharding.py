"""The model's logical axis names drive real sharding on a fake 4-device CPU mesh."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

_SCRIPT = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import sys
    sys.path.insert(0, "tests")
    import jax, numpy as np
    from flax import linen as nn
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from hf_fixtures import padded_batch, random_params, shift_right
    from flanrec.model.params import flatten
    from flanrec.model import Transformer, get_preset

    cfg = get_preset("tiny")
    params = random_params(cfg)
    enc = padded_batch(np.random.default_rng(0), 4, 8)
    tgt = padded_batch(np.random.default_rng(1), 4, 6)
    model = Transformer(cfg)
    ref = jax.jit(model.apply)({"params": params}, enc, shift_right(tgt), tgt)

    rules = (("batch", "data"), ("vocab", "model"), ("mlp", "model"), ("heads", "model"),
             ("joined_kv", "model"), ("embed", None), ("kv", None), ("length", None),
             ("relpos_buckets", None))
    mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ("data", "model"))
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), enc, tgt))["params"]
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), mesh, rules)
    placed = jax.device_put(params, shardings)
    flat = flatten(placed)
    assert flat["decoder/logits_dense/kernel"].sharding.spec == P(None, "model")
    assert flat["encoder/layers_0/attention/query/kernel"].sharding.spec == P(None, "model")
    batch = NamedSharding(mesh, P("data", None))
    # jax.set_mesh, not the deprecated `with mesh:` (under which flax emits no constraints).
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        fwd = jax.jit(lambda p, e, d, t: model.apply({"params": p}, e, d, t))
        out = fwd(placed, jax.device_put(enc, batch), jax.device_put(shift_right(tgt), batch),
                  jax.device_put(tgt, batch))
        hlo = fwd.lower(placed, enc, shift_right(tgt), tgt).as_text()
    assert hlo.count("sdy.sharding_constraint") >= 10, "activations carry no constraints"
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-4)
    print("OK", out.sharding)
""")


def test_forward_under_logical_sharding_matches_single_device():
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root))
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "OK" in proc.stdout
