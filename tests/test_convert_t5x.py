"""T5X checkpoint import: real on-disk layouts (msgpack + TensorStore zarr, and Orbax), exact
round trips, config inference and every refusal."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from flanrec.interop.t5x import (
    find_t5x_checkpoint,
    import_t5x,
    write_legacy_layout,
    write_t5x_checkpoint,
)
from flanrec.model.config import T5Config, get_preset
from flanrec.model.params import flatten, param_specs, unflatten

# Deliberately not a preset: every inferred field differs from the defaults.
ODD = T5Config(vocab_size=96, d_model=24, d_ff=40, num_heads=3, d_kv=5, num_encoder_layers=2,
               num_decoder_layers=3, relative_attention_num_buckets=16)


def random_flat(cfg: T5Config, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(shape).astype(np.float32)
            for k, (shape, _) in param_specs(cfg).items()}


def assert_same(flat: dict[str, np.ndarray], params: dict) -> None:
    got = flatten(params)
    assert set(got) == set(flat)
    for k, v in flat.items():
        assert got[k].dtype == np.float32, k
        np.testing.assert_array_equal(got[k], v, err_msg=k)


def test_round_trip_exact_and_config_inferred(tmp_path):
    flat = random_flat(ODD)
    ckpt = write_t5x_checkpoint(unflatten(flat), tmp_path / "model", step=42)
    assert ckpt == tmp_path / "model" / "checkpoint_42"
    for path in (tmp_path / "model", ckpt, ckpt / "checkpoint"):
        cfg, params = import_t5x(path)
        assert cfg == ODD.replace(name="custom")
        assert_same(flat, params)


def test_preset_name_recognised(tmp_path):
    flat = random_flat(get_preset("tiny"), seed=3)
    cfg, params = import_t5x(write_t5x_checkpoint(unflatten(flat), tmp_path, step=1))
    assert cfg == get_preset("tiny")
    assert_same(flat, params)


def test_model_dir_takes_highest_complete_step(tmp_path):
    old, new = random_flat(ODD, 1), random_flat(ODD, 2)
    write_t5x_checkpoint(unflatten(old), tmp_path, step=9)
    write_t5x_checkpoint(unflatten(new), tmp_path, step=10)
    (tmp_path / "checkpoint_11").mkdir()  # interrupted save: no msgpack file yet
    (tmp_path / "checkpoint_12.tmp-123").mkdir()  # T5X temp dir
    assert find_t5x_checkpoint(tmp_path) == tmp_path / "checkpoint_10"
    assert_same(new, import_t5x(tmp_path)[1])


def test_written_layout_is_what_t5x_writes(tmp_path):
    """Checked independently of our reader: msgpack through plain `msgpack` + flax's ext types,
    arrays through TensorStore opened the way T5X's restore does."""
    import tensorstore as ts
    from flax import serialization

    flat = random_flat(ODD)
    ckpt = write_t5x_checkpoint(unflatten(flat), tmp_path, step=7)
    contents = serialization.msgpack_restore((ckpt / "checkpoint").read_bytes())
    assert contents["version"] == 3
    assert int(contents["optimizer"]["state"]["step"]) == 7
    spec = contents["optimizer"]["target"]["encoder"]["layers_1"]["attention"]["query"]["kernel"]
    assert spec["driver"] == "zarr" and spec["dtype"] == "float32"
    assert spec["kvstore"]["driver"] == "file"
    rel = spec["kvstore"]["path"].rstrip("/")
    assert rel == "target.encoder.layers_1.attention.query.kernel"  # relative, dotted
    assert spec["metadata"]["compressor"]["id"] == "gzip"
    assert spec["metadata"]["shape"] == [24, 15]
    zarray = json.loads((ckpt / rel / ".zarray").read_text())
    assert zarray["compressor"]["id"] == "gzip" and zarray["dtype"] == "<f4"
    # T5X restore: drop chunks/compressor, make the path absolute, open, read.
    spec = dict(spec, metadata={"shape": spec["metadata"]["shape"]},
                kvstore=dict(spec["kvstore"], path=str(ckpt / rel)))
    arr = ts.open(spec, open=True).result().read().result()
    np.testing.assert_array_equal(arr, flat["encoder/layers_1/attention/query/kernel"])
    assert not list(tmp_path.glob("*.tmp-*"))  # temp dir renamed away


def test_reads_variants_found_in_real_checkpoints(tmp_path):
    """gcs kvstore driver (checkpoints written to gs:// then copied), old tensorstore specs with
    the path at top level, bfloat16 arrays, and small arrays inlined in the msgpack."""
    import ml_dtypes
    import tensorstore as ts
    from flax import serialization

    flat = random_flat(ODD)
    ckpt = write_t5x_checkpoint(unflatten(flat), tmp_path, step=1)
    contents = serialization.msgpack_restore((ckpt / "checkpoint").read_bytes())
    target = contents["optimizer"]["target"]
    emb = target["token_embedder"]["embedding"]
    emb["kvstore"] = {"driver": "gcs", "bucket": "t5x-dummy-bucket",
                      "path": emb["kvstore"]["path"]}
    rel_spec = target["encoder"]["encoder_norm"]["scale"]
    rel_spec["path"] = rel_spec["kvstore"].pop("path").rstrip("/")
    target["decoder"]["decoder_norm"]["scale"] = flat["decoder/decoder_norm/scale"]
    shutil.rmtree(ckpt / "target.decoder.decoder_norm.scale")
    name = "decoder/layers_2/mlp/wo/kernel"
    rel = "target." + name.replace("/", ".")
    shutil.rmtree(ckpt / rel)
    bf16 = flat[name].astype(ml_dtypes.bfloat16)
    store = ts.open({"driver": "zarr", "kvstore": {"driver": "file", "path": str(ckpt / rel)},
                     "metadata": {"compressor": {"id": "gzip"}, "shape": list(bf16.shape),
                                  "chunks": list(bf16.shape)}, "dtype": "bfloat16"},
                    create=True).result()
    store.write(bf16).result()
    target["decoder"]["layers_2"]["mlp"]["wo"]["kernel"]["dtype"] = "bfloat16"
    (ckpt / "checkpoint").write_bytes(serialization.msgpack_serialize(contents))

    cfg, params = import_t5x(ckpt)
    got = flatten(params)
    np.testing.assert_array_equal(got[name], bf16.astype(np.float32))
    assert got[name].dtype == np.float32
    flat[name] = bf16.astype(np.float32)
    assert_same(flat, params)


# --------------------------------------------------------------------------------------------
# Orbax layout (newer T5X): checkpoint_N/state/ written the way T5X's Orbax manager writes it


@pytest.mark.parametrize("use_ocdbt", [False, True])
def test_orbax_layout(tmp_path, use_ocdbt):
    import orbax.checkpoint as ocp

    flat = random_flat(ODD, seed=5)
    state = {"target": unflatten(flat),
             "state": {"step": np.int32(100),
                       "param_states": {"encoder": {"encoder_norm": {"scale": {
                           "v": np.ones(24, np.float32)}}}}}}
    options = ocp.CheckpointManagerOptions(step_prefix="checkpoint",
                                           enable_async_checkpointing=False)
    with ocp.CheckpointManager(tmp_path, options=options, item_names=("state",),
                               item_handlers={"state": ocp.PyTreeCheckpointHandler(
                                   use_ocdbt=use_ocdbt)}) as mgr:
        mgr.save(100, args=ocp.args.Composite(state=ocp.args.PyTreeSave(state)))
    assert (tmp_path / "checkpoint_100" / "state").is_dir()
    cfg, params = import_t5x(tmp_path)
    assert cfg == ODD.replace(name="custom")
    assert_same(flat, params)


def test_old_orbax_aggregate_layout(tmp_path):
    """Orbax before `_METADATA`: the tree is a msgpack `checkpoint` with placeholder leaves."""
    import orbax.checkpoint as ocp
    from flax import serialization

    flat = random_flat(ODD, seed=6)
    state = {"target": unflatten(flat), "state": {"step": np.int32(3)}}
    options = ocp.CheckpointManagerOptions(step_prefix="checkpoint",
                                           enable_async_checkpointing=False)
    with ocp.CheckpointManager(tmp_path, options=options, item_names=("state",),
                               item_handlers={"state": ocp.PyTreeCheckpointHandler(
                                   use_ocdbt=False)}) as mgr:
        mgr.save(3, args=ocp.args.Composite(state=ocp.args.PyTreeSave(state)))
    item = tmp_path / "checkpoint_3" / "state"
    (item / "_METADATA").unlink()
    placeholders = {k: "PLACEHOLDER://target." + k.replace("/", ".") for k in flat}
    placeholders["encoder/encoder_norm/scale"] = flat["encoder/encoder_norm/scale"]  # inline
    aggregate = {"target": unflatten(placeholders), "state": {"step": "PLACEHOLDER://state.step"}}
    (item / "checkpoint").write_bytes(serialization.msgpack_serialize(aggregate))
    cfg, params = import_t5x(tmp_path)
    assert cfg == ODD.replace(name="custom")
    assert_same(flat, params)


# --------------------------------------------------------------------------------------------
# Refusals: each message names the problem


def write_raw(tmp_path: Path, flat: dict) -> Path:
    return write_legacy_layout(flat, tmp_path, step=1)


def test_refuses_missing_msgpack_file(tmp_path):
    (tmp_path / "checkpoint_5").mkdir()
    with pytest.raises(ValueError, match=r"checkpoint_5.*incomplete.*'checkpoint' msgpack file"):
        import_t5x(tmp_path)
    with pytest.raises(ValueError, match="not a T5X checkpoint"):
        import_t5x(tmp_path / "checkpoint_5")
    with pytest.raises(FileNotFoundError, match="no such T5X checkpoint"):
        import_t5x(tmp_path / "nope")


def test_refuses_missing_array_dir(tmp_path):
    ckpt = write_raw(tmp_path, random_flat(ODD))
    shutil.rmtree(ckpt / "target.encoder.layers_1.mlp.wi_1.kernel")
    with pytest.raises(FileNotFoundError,
                       match=r"'target.encoder.layers_1.mlp.wi_1.kernel'.*encoder/layers_1/mlp"):
        import_t5x(ckpt)


def test_refuses_t5_v1_0(tmp_path):
    flat = random_flat(ODD)
    for k in list(flat):
        if k.endswith("mlp/wi_1/kernel"):
            del flat[k]
        elif k.endswith("mlp/wi_0/kernel"):
            flat[k.replace("wi_0", "wi")] = flat.pop(k)
    with pytest.raises(ValueError, match=r"T5 v1\.0.*mlp/wi/kernel"):
        import_t5x(write_raw(tmp_path, flat))


def test_tied_embeddings_give_a_tied_config(tmp_path):
    flat = random_flat(ODD)
    del flat["decoder/logits_dense/kernel"]
    cfg, params = import_t5x(write_raw(tmp_path, flat))
    assert cfg == ODD.replace(name="custom", logits_via_embedding=True)
    assert_same(flat, params)


def test_refuses_decoder_only(tmp_path):
    flat = {k: v for k, v in random_flat(ODD).items() if not k.startswith("encoder/")}
    with pytest.raises(ValueError, match="decoder-only"):
        import_t5x(write_raw(tmp_path, flat))


def test_empty_target_says_what_is_missing(tmp_path):
    with pytest.raises(ValueError, match="'target' \\(model parameters\\) is empty") as err:
        import_t5x(write_raw(tmp_path / "empty", {}))
    assert "decoder-only" not in str(err.value)
    # Parameters under other names than encoder/decoder: named, not called decoder-only.
    flat = {f"transformer/{k}": v for k, v in random_flat(ODD).items()}
    with pytest.raises(ValueError, match=r"not an encoder-decoder.*\['transformer'\]"):
        import_t5x(write_raw(tmp_path / "other", flat))


def test_refuses_wrong_shapes(tmp_path):
    flat = random_flat(ODD)
    flat["decoder/layers_2/self_attention/out/kernel"] = np.zeros((15, 23), np.float32)
    with pytest.raises(ValueError, match=r"decoder/layers_2/self_attention/out/kernel has shape "
                                         r"\(15, 23\), expected \(15, 24\)"):
        import_t5x(write_raw(tmp_path, flat))


def test_refuses_missing_layer_and_garbage(tmp_path):
    flat = {k: v for k, v in random_flat(ODD).items() if "decoder/layers_1/" not in k}
    with pytest.raises(ValueError, match="missing layers_1"):
        import_t5x(write_raw(tmp_path / "a", flat))
    bad = tmp_path / "b" / "checkpoint_1"
    bad.mkdir(parents=True)
    (bad / "checkpoint").write_bytes(b"\xc1not msgpack")
    with pytest.raises(ValueError, match="not a readable T5X msgpack"):
        import_t5x(bad)
    (bad / "checkpoint").write_bytes(b"model_checkpoint_path: 'model.ckpt-1'\n")
    with pytest.raises(ValueError, match="TensorFlow"):
        import_t5x(bad)


def test_writer_refuses_non_v11_and_existing(tmp_path):
    flat = random_flat(ODD)
    write_t5x_checkpoint(unflatten(flat), tmp_path, step=1)
    with pytest.raises(FileExistsError):
        write_t5x_checkpoint(unflatten(flat), tmp_path, step=1)
    flat["decoder/layers_0/mlp/wi/kernel"] = flat.pop("decoder/layers_0/mlp/wi_0/kernel")
    with pytest.raises(ValueError, match=r"T5 v1\.0"):
        write_t5x_checkpoint(unflatten(flat), tmp_path, step=2)
    assert not (tmp_path / "checkpoint_2").exists()
