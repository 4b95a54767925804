"""`python -m flanrec.convert` end to end: a random tiny HF T5 saved by transformers goes
hf -> flanrec -> hf / t5x -> flanrec, and comes back bit-identical."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

import flanrec.interop.hf as hf
from flanrec.convert import cli
from flanrec.convert import job as convert_job
from flanrec.model.config import get_preset
from flanrec.model.params import count_params, flatten

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from hf_fixtures import save_hf_t5  # noqa: E402


def spiece_model() -> Path | None:
    """seqio's test SentencePiece model, located without importing seqio (TensorFlow)."""
    import importlib.util

    spec = importlib.util.find_spec("seqio")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = (Path(list(spec.submodule_search_locations)[0])
            / "test_data" / "sentencepiece" / "sentencepiece.model")
    return path if path.is_file() else None


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    path = save_hf_t5(tmp_path_factory.mktemp("hf") / "tiny-hf", seed=1)
    return path


def assert_same(a: dict, b: dict) -> None:
    fa, fb = flatten(a), flatten(b)
    assert set(fa) == set(fb)
    for k in fa:
        np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


def no_leftovers(parent: Path) -> None:
    junk = [p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    assert not junk, junk


def test_hf_to_flanrec_to_hf_round_trip(tmp_path, hf_dir, capsys):
    cfg_hf, params_hf = hf.import_hf(hf_dir)
    assert cli.main(["--from", "hf", "--src", str(hf_dir), "--out", str(tmp_path / "flan")]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("hf -> flanrec: tiny, ")
    assert f"{count_params(get_preset('tiny')):,} params" in line

    from flanrec.checkpoints import load_params

    cfg, params = load_params(tmp_path / "flan")
    assert cfg.d_model == 32 and cfg.num_heads == 4 and cfg.vocab_size == 128
    assert_same(params, params_hf)

    assert cli.main(["--from", "flanrec", "--src", str(tmp_path / "flan"),
                     "--out", str(tmp_path / "hf2"), "--to", "hf"]) == 0
    assert "flanrec -> hf: tiny" in capsys.readouterr().out
    # The exported dir loads in transformers with every tensor equal to the original model's.
    orig = transformers.T5ForConditionalGeneration.from_pretrained(str(hf_dir)).state_dict()
    back = transformers.T5ForConditionalGeneration.from_pretrained(str(tmp_path / "hf2"))
    assert back.lm_head.weight.data_ptr() != back.shared.weight.data_ptr()
    for name, tensor in back.state_dict().items():
        assert torch.equal(tensor, orig[name]), name
    no_leftovers(tmp_path)


def test_via_t5x_and_python_dash_m(tmp_path, hf_dir):
    """hf -> t5x (legacy layout) -> flanrec, the second hop through the real `python -m`."""
    cfg_hf, params_hf = hf.import_hf(hf_dir)
    assert cli.main(["--from", "hf", "--src", str(hf_dir), "--out", str(tmp_path / "t5x"),
                     "--to", "t5x", "--step", "1000"]) == 0
    assert (tmp_path / "t5x" / "checkpoint_1000" / "checkpoint").is_file()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "flanrec.convert", "--from", "t5x",
                           "--src", str(tmp_path / "t5x"), "--out", str(tmp_path / "flan")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("t5x -> flanrec: tiny")
    from flanrec.checkpoints import load_params

    assert_same(load_params(tmp_path / "flan")[1], params_hf)


def test_vocabulary_travels_with_the_weights(tmp_path, hf_dir):
    sp = spiece_model()
    if sp is None:
        pytest.skip("seqio test vocabulary not installed")
    src = tmp_path / "hf"
    shutil.copytree(hf_dir, src)
    shutil.copyfile(sp, src / "spiece.model")
    assert cli.main(["--from", "hf", "--src", str(src), "--out", str(tmp_path / "flan")]) == 0
    assert (tmp_path / "flan" / "spiece.model").read_bytes() == sp.read_bytes()
    assert cli.main(["--from", "flanrec", "--src", str(tmp_path / "flan"),
                     "--out", str(tmp_path / "hf2"), "--to", "hf"]) == 0
    assert (tmp_path / "hf2" / "spiece.model").read_bytes() == sp.read_bytes()


def test_refuses_existing_output_unless_overwrite(tmp_path, hf_dir, capsys):
    """A user's directory is never replaced, not even with --overwrite (issue 13: data loss);
    a flanrec.convert output is replaced only with --overwrite."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    args = ["--from", "hf", "--src", str(hf_dir), "--out", str(out)]
    for extra in ([], ["--overwrite"]):
        assert cli.main([*args, *extra]) == 2
        err = capsys.readouterr().err
        assert "was not written by flanrec" in err and "keep.txt" in err, err
        assert (out / "keep.txt").read_text() == "precious"
    mine = tmp_path / "mine"
    args = ["--from", "hf", "--src", str(hf_dir), "--out", str(mine)]
    assert cli.main(args) == 0
    capsys.readouterr()
    assert cli.main(args) == 2
    assert "exists and is not empty (pass --overwrite)" in capsys.readouterr().err
    assert cli.main([*args, "--overwrite"]) == 0
    assert (mine / "params").is_dir() and (mine / ".flanrec-output.json").is_file()
    no_leftovers(tmp_path)


def test_clear_errors_and_nothing_half_written(tmp_path, hf_dir, capsys, monkeypatch):
    assert cli.main(["--from", "t5x", "--src", str(hf_dir), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("flanrec.convert: error: ") and "not a T5X checkpoint" in err
    assert cli.main(["--from", "flanrec", "--src", str(hf_dir),
                     "--out", str(tmp_path / "x")]) == 2
    assert "Hugging Face" in capsys.readouterr().err
    assert cli.main(["--from", "hf", "--src", str(tmp_path / "nope"),
                     "--out", str(tmp_path / "x")]) == 2
    assert cli.main(["--from", "hf", "--src", str(hf_dir), "--out", str(hf_dir / "inside")]) == 2
    assert "must not be --src or inside it" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()

    # A writer that dies half-way leaves neither --out nor a temp dir behind.
    real = convert_job.write_target

    def dies_half_way(kind, cfg, params, out, **kw):
        real(kind, cfg, params, out, **kw)
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(convert_job, "write_target", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        cli.main(["--from", "hf", "--src", str(hf_dir), "--out", str(tmp_path / "y")])
    assert not (tmp_path / "y").exists()
    no_leftovers(tmp_path)
