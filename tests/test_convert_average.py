"""`python -m flanrec.convert --average` (model soup) on real Orbax checkpoints."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hf_fixtures import random_params

from flanrec import checkpoints
from flanrec.convert.average import average_params
from flanrec.convert.cli import main
from flanrec.model import get_preset
from flanrec.model.params import flatten

TINY = get_preset("tiny")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("avg")
    a, b = random_params(TINY, seed=1), random_params(TINY, seed=2)
    for name, params in (("a", a), ("a2", a), ("b", b)):
        checkpoints.save_params_checkpoint(TINY, params, root / name)
    return root, a, b


def test_two_identical_checkpoints_average_to_themselves(ckpts, tmp_path, capsys):
    root, a, _ = ckpts
    assert main(["--average", str(root / "a"), str(root / "a2"), "--out", str(tmp_path / "s")]) == 0
    assert "average of 2 -> flanrec" in capsys.readouterr().out
    cfg, got = checkpoints.load_params(tmp_path / "s")
    assert cfg == TINY
    want = flatten(a)
    for name, value in flatten(got).items():
        assert np.array_equal(value, want[name]), name


def test_two_different_checkpoints_average_elementwise(ckpts, tmp_path):
    root, a, b = ckpts
    out = tmp_path / "soup"
    proc = subprocess.run([sys.executable, "-m", "flanrec.convert", "--average", str(root / "a"),
                           str(root / "b"), "--out", str(out)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    _, got = checkpoints.load_params(out)
    fa, fb, fg = flatten(a), flatten(b), flatten(got)
    assert set(fg) == set(fa)
    for name in fa:
        want = ((fa[name].astype(np.float64) + fb[name]) / 2).astype(np.float32)
        np.testing.assert_array_equal(fg[name], want, err_msg=name)
        assert not np.array_equal(fg[name], fa[name]), name
    # Hand-computed: three trees, one leaf.
    mean = average_params([{"w": np.array([1.0, 2.0])}, {"w": np.array([3.0, 2.0])},
                           {"w": np.array([2.0, 5.0])}])
    np.testing.assert_array_equal(mean["w"], np.array([2.0, 3.0], np.float32))


def test_average_to_hf_and_refusals(ckpts, tmp_path, capsys):
    root, a, b = ckpts
    assert main(["--average", str(root / "a"), str(root / "b"), "--out", str(tmp_path / "hf"),
                 "--to", "hf"]) == 0
    assert (tmp_path / "hf" / "config.json").is_file()
    other = get_preset("tiny", d_ff=48)
    checkpoints.save_params_checkpoint(other, random_params(other), tmp_path / "other")
    assert main(["--average", str(root / "a"), str(tmp_path / "other"),
                 "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "model config differs" in err and "d_ff" in err
    assert not (tmp_path / "bad").exists()
    assert main(["--average", str(root / "a"), "--out", str(tmp_path / "one")]) == 2
    assert "at least two" in capsys.readouterr().err
    assert main(["--average", str(root / "a"), str(root / "b"), "--out", str(root / "a")]) == 2
    assert "must not be an --average source" in capsys.readouterr().err
    with pytest.raises(ValueError, match="parameter w has shape"):
        average_params([{"w": np.zeros(2)}, {"w": np.zeros(3)}], ["x", "y"])
    with pytest.raises(SystemExit):
        main(["--average", str(root / "a"), str(root / "b"), "--from", "hf",
              "--out", str(tmp_path / "z")])
