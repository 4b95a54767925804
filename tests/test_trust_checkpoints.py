"""Damaged checkpoints are named and skipped, never read (issue 13, "Damaged checkpoints").

Real Orbax checkpoints written here, then damaged the ways a disk, a copy or a person does:
a data file truncated, a file deleted, 256 bytes overwritten in the params (which Orbax reads
back without complaint). Every reader of a MODEL_DIR — training resume, `flanrec.load` /
`load_params_any` (what `flanrec.infer` uses), `flanrec.convert --from flanrec` — must warn
naming the checkpoint and the file and use the newest checkpoint that verifies; a checkpoint
named explicitly must fail with one clear error. NaN/inf weights are refused by name.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flanrec import api
from flanrec.checkpoints import (
    DamagedCheckpointError,
    TrainCheckpointer,
    load_params,
    load_params_any,
    save_params_checkpoint,
)
from flanrec.convert import cli as convert_cli
from flanrec.files import checksums
from flanrec.model.config import get_preset
from flanrec.model.params import flatten, param_specs, unflatten

REPO = Path(__file__).resolve().parents[1]
CFG = get_preset("tiny")


def random_params(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return unflatten({k: rng.standard_normal(shape).astype(np.float32)
                      for k, (shape, _) in param_specs(CFG).items()})


def assert_params_equal(a: dict, b: dict) -> None:
    fa, fb = flatten(a), flatten(b)
    assert set(fa) == set(fb)
    for k in fa:
        np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=k)


def abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                        tree)


def write_run(model_dir: Path, steps=(1, 2), async_save: bool = False) -> dict[int, dict]:
    """A MODEL_DIR with one checkpoint per step (distinct params each); returns them."""
    tx = optax.adafactor(1e-3)
    saved = {}
    with TrainCheckpointer(model_dir, async_save=async_save) as ckpt:
        for step in steps:
            params = jax.tree.map(jnp.asarray, random_params(step))
            ckpt.save(step, params, tx.init(params), {"model_config": CFG, "rng": [0, step]})
            saved[step] = random_params(step)
    return saved


def largest_params_file(ckpt: Path) -> Path:
    files = [p for p in (ckpt / "params").rglob("*") if p.is_file()]
    return max(files, key=lambda p: p.stat().st_size)


def truncate(ckpt: Path) -> str:
    f = largest_params_file(ckpt)
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return str(f.relative_to(ckpt))


def delete(ckpt: Path) -> str:
    f = largest_params_file(ckpt)
    f.unlink()
    return str(f.relative_to(ckpt))


def overwrite_256(ckpt: Path) -> str:
    f = largest_params_file(ckpt)
    data = bytearray(f.read_bytes())
    mid = len(data) // 2
    data[mid: mid + 256] = bytes((b + 1) % 256 for b in data[mid: mid + 256])
    f.write_bytes(bytes(data))
    return str(f.relative_to(ckpt))


def delete_metadata(ckpt: Path) -> str:
    (ckpt / "params" / "_METADATA").unlink()
    return "params/_METADATA"


DAMAGE = {"truncated": truncate, "deleted": delete, "overwritten": overwrite_256,
          "metadata_deleted": delete_metadata}
WHAT = {"truncated": "truncated", "deleted": "is missing", "overwritten": "overwritten bytes",
        "metadata_deleted": "is missing"}


def test_checksums_are_recorded_for_sync_async_and_params_only_saves(tmp_path):
    write_run(tmp_path / "sync", steps=(1,))
    write_run(tmp_path / "async", steps=(1, 2, 3), async_save=True)
    save_params_checkpoint(CFG, random_params(9), tmp_path / "params_only")
    for ckpt in (tmp_path / "sync" / "checkpoint_1", tmp_path / "async" / "checkpoint_3",
                 tmp_path / "async" / "checkpoint_2", tmp_path / "params_only"):
        doc = json.loads((ckpt / checksums.CHECKSUMS_FILE).read_text())
        assert doc["algorithm"] == "sha256"
        assert any(f.startswith("params/") for f in doc["files"]), ckpt
        assert checksums.verify(ckpt) == [], ckpt
    assert any(f.startswith("opt_state/") for f in json.loads(
        (tmp_path / "sync" / "checkpoint_1" / checksums.CHECKSUMS_FILE).read_text())["files"])


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_newest_checkpoint_falls_back_to_the_intact_one(tmp_path, caplog, damage):
    saved = write_run(tmp_path / "run")
    bad = tmp_path / "run" / "checkpoint_2"
    rel = DAMAGE[damage](bad)
    with caplog.at_level(logging.WARNING, logger="flanrec.checkpoints"):
        cfg, params = load_params(tmp_path / "run")
    assert cfg == CFG
    assert_params_equal(params, saved[1])  # never the damaged step 2's (changed) weights
    warned = caplog.text
    assert f"{bad} is damaged" in warned and rel in warned and WHAT[damage] in warned
    assert "using checkpoint_1, the newest checkpoint that verifies" in warned
    # The same through the notebook API and load_params_any (what flanrec.infer calls).
    assert_params_equal(load_params_any(tmp_path / "run")[1], saved[1])
    assert_params_equal(jax.device_get(api.load(tmp_path / "run").params), saved[1])
    # Named explicitly: one clear error, no fallback.
    with pytest.raises(DamagedCheckpointError, match=rf"checkpoint {bad} is damaged: file "
                                                     rf".*{WHAT[damage]}.*named explicitly"):
        load_params(bad)


def test_overwritten_bytes_in_opt_state_do_not_block_inference_but_block_resume(tmp_path):
    saved = write_run(tmp_path / "run")
    opt_files = [p for p in (tmp_path / "run" / "checkpoint_2" / "opt_state").rglob("*")
                 if p.is_file()]
    victim = max(opt_files, key=lambda p: p.stat().st_size)
    victim.write_bytes(b"\0" * victim.stat().st_size)
    # Inference reads params only: step 2 is usable.
    assert_params_equal(load_params(tmp_path / "run")[1], saved[2])
    # Resume needs the optimizer state: step 2 is set aside, training continues from step 1.
    with TrainCheckpointer(tmp_path / "run") as ckpt:
        assert ckpt.latest_step() == 1
    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert names[0] == "checkpoint_1" and names[1].startswith("checkpoint_2.damaged-")


def test_no_checkpoint_verifies_is_one_error(tmp_path):
    write_run(tmp_path / "run")
    truncate(tmp_path / "run" / "checkpoint_1")
    overwrite_256(tmp_path / "run" / "checkpoint_2")
    with pytest.raises(DamagedCheckpointError) as e:
        load_params(tmp_path / "run")
    msg = str(e.value)
    assert "no checkpoint verifies" in msg and "\n" not in msg
    assert "checkpoint_2: file params/" in msg and "checkpoint_1: file params/" in msg
    with pytest.raises(DamagedCheckpointError, match="no checkpoint verifies"):
        TrainCheckpointer(tmp_path / "run")
    # Nothing was renamed or deleted by the refusal.
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoint_1",
                                                                    "checkpoint_2"]


def test_checkpoints_without_checksums_load_with_one_warning(tmp_path, caplog):
    saved = write_run(tmp_path / "run")
    for step in (1, 2):
        (tmp_path / "run" / f"checkpoint_{step}" / checksums.CHECKSUMS_FILE).unlink()
    with caplog.at_level(logging.WARNING, logger="flanrec.checkpoints"):
        assert_params_equal(load_params(tmp_path / "run")[1], saved[2])
        assert_params_equal(load_params(tmp_path / "run")[1], saved[2])
    warnings = [r for r in caplog.records if "cannot be verified" in r.getMessage()]
    assert len(warnings) == 1 and "checkpoint_2" in warnings[0].getMessage()


def test_resume_sets_the_damaged_step_aside_and_saves_it_again(tmp_path, caplog):
    saved = write_run(tmp_path / "run")
    overwrite_256(tmp_path / "run" / "checkpoint_2")
    tx = optax.adafactor(1e-3)
    params = jax.tree.map(jnp.asarray, random_params(1))
    opt_state = tx.init(params)
    with caplog.at_level(logging.WARNING, logger="flanrec.checkpoints"):
        with TrainCheckpointer(tmp_path / "run", async_save=False) as ckpt:
            assert ckpt.latest_step() == 1
            p, _, meta = ckpt.restore(abstract_params=abstract(params),
                                      abstract_opt_state=abstract(opt_state))
            assert meta["step"] == 1
            assert_params_equal(jax.device_get(p), saved[1])
            # Step 2 is free again (Orbax would otherwise refuse it as already saved).
            assert ckpt.save(2, jax.tree.map(jnp.asarray, random_params(22)), opt_state,
                             {"model_config": CFG})
    assert "moving damaged checkpoint" in caplog.text
    aside = [p for p in (tmp_path / "run").iterdir() if ".damaged-" in p.name]
    assert len(aside) == 1 and (aside[0] / "params").is_dir()  # kept, not deleted
    assert checksums.verify(tmp_path / "run" / "checkpoint_2") == []
    assert_params_equal(load_params(tmp_path / "run")[1], random_params(22))


def test_restore_of_a_named_damaged_step_is_refused(tmp_path):
    write_run(tmp_path / "run")
    tx = optax.adafactor(1e-3)
    params = jax.tree.map(jnp.asarray, random_params(1))
    with TrainCheckpointer(tmp_path / "run", async_save=False) as ckpt:
        delete(tmp_path / "run" / "checkpoint_1")  # damaged after the start-up check
        with pytest.raises(DamagedCheckpointError, match="checkpoint_1 is damaged: file "
                                                         "params/.* is missing"):
            ckpt.restore(1, abstract_params=abstract(params),
                         abstract_opt_state=abstract(tx.init(params)))


def test_convert_falls_back_for_model_dir_and_refuses_a_named_damaged_one(tmp_path, capsys):
    saved = write_run(tmp_path / "run")
    overwrite_256(tmp_path / "run" / "checkpoint_2")
    assert convert_cli.main(["--from", "flanrec", "--src", str(tmp_path / "run"),
                             "--out", str(tmp_path / "out")]) == 0
    assert_params_equal(load_params(tmp_path / "out")[1], saved[1])
    # A real CLI run: one line on stderr, exit code 2, nothing written.
    proc = subprocess.run(
        [sys.executable, "-m", "flanrec.convert", "--from", "flanrec", "--src",
         str(tmp_path / "run" / "checkpoint_2"), "--out", str(tmp_path / "out2")],
        capture_output=True, text=True, cwd=REPO, timeout=300,
        env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(lines) == 1 and "checkpoint_2 is damaged" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out2").exists()


def test_nan_weights_are_refused_by_convert_naming_parameter_and_count(tmp_path, capsys):
    flat = flatten(random_params(3))
    flat["encoder/layers_0/mlp/wi_0/kernel"][0, :5] = np.nan
    flat["decoder/logits_dense/kernel"][1, 2] = np.inf
    save_params_checkpoint(CFG, unflatten(flat), tmp_path / "nan")
    rc = convert_cli.main(["--from", "flanrec", "--src", str(tmp_path / "nan"), "--out",
                           str(tmp_path / "out"), "--to", "hf"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "2 parameter(s) hold non-finite values" in err
    assert "encoder/layers_0/mlp/wi_0/kernel (5 NaN, 0 inf" in err
    assert "decoder/logits_dense/kernel (0 NaN, 1 inf" in err
    assert not (tmp_path / "out").exists()
    rc = convert_cli.main(["--average", str(tmp_path / "nan"), str(tmp_path / "nan"),
                           "--out", str(tmp_path / "soup")])
    assert rc == 2 and "non-finite" in capsys.readouterr().err


def test_a_damaged_best_checkpoint_falls_back_to_the_newest_intact_one(tmp_path, caplog):
    from flanrec.checkpoints import BEST_FILE

    saved = write_run(tmp_path / "run", steps=(1, 2, 3))
    (tmp_path / "run" / BEST_FILE).write_text(json.dumps({"step": 2}))
    assert_params_equal(load_params(tmp_path / "run")[1], saved[2])  # the best, intact
    rel = truncate(tmp_path / "run" / "checkpoint_2")
    with caplog.at_level(logging.WARNING, logger="flanrec.checkpoints"):
        assert_params_equal(load_params(tmp_path / "run")[1], saved[3])
    assert "the best checkpoint checkpoint_2" in caplog.text and rel in caplog.text
