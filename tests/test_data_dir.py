"""One data directory: `prepare` without `--out`, the quickstart, `import tasks` and
`prepare --list_tasks` agree on where prepared data lives, and prepare shows its progress.

The jobs run as subprocesses with `FLANREC_CACHE` pointing into the test's tmp dir (the
default location is `$FLANREC_CACHE/prepared/ml-100k`), on a small MovieLens-format log
written here (GroupLens `u.data`/`u.item`/`u.user`, 60 users), so nothing is downloaded and
nothing of the user's home is touched.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for key in ("FLANREC_DATA_DIR", "FLANREC_VERBOSE", "TF_CPP_MIN_LOG_LEVEL", "FLANREC_VOCAB"):
        env.pop(key, None)
    env.update(FLANREC_CACHE=str(tmp / "cache"), JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
               **extra)
    return env


def _grouplens(root: Path, users: int = 60, per_user: int = 12, items: int = 80) -> Path:
    root.mkdir(parents=True)
    rows = [f"{u}\t{1 + (u * 7 + t * 5) % items}\t{1 + (u + t) % 5}\t{880000000 + 100 * t + u}"
            for u in range(1, users + 1) for t in range(per_user)]
    (root / "u.data").write_text("\n".join(rows) + "\n")
    genres = "|".join("0" for _ in range(19))
    (root / "u.item").write_text("".join(
        f"{i}|Movie number {i} ({1990 + i % 10})|01-Jan-{1990 + i % 10}||http://x|{genres}\n"
        for i in range(1, items + 1)))
    (root / "u.user").write_text("".join(
        f"{u}|{20 + u % 40}|{'MF'[u % 2]}|student|{10000 + u}\n" for u in range(1, users + 1)))
    return root


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flanrec.prepare", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_prepare_default_out_is_where_tasks_look_and_progress_is_shown(tmp_path):
    raw = _grouplens(tmp_path / "raw")
    env = _env(tmp_path)
    # Before: nothing prepared. --list_tasks says at warning level where it looked and how to
    # prepare it (warnings go to stderr, the list to stdout), lists nothing of ours, and
    # stderr holds nothing else.
    before = _run(["--list_tasks"], env)
    default = tmp_path / "cache" / "prepared" / "ml-100k"
    assert before.returncode == 0
    warning = before.stderr.strip().splitlines()
    assert len(warning) == 1 and " W flanrec.tasks]" in warning[0], before.stderr
    assert str(default) in warning[0] and " W flanrec" not in before.stdout
    assert "python -m flanrec.prepare --dataset ml-100k" in warning[0]
    assert not any(n.startswith("ml100k_") for n in before.stdout.split())

    proc = _run(["--dataset", "ml-100k", "--raw_dir", str(raw), "--train_vocab",
                 "--vocab_size", "600", "--offline"], env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stderr == "", proc.stderr  # quiet: no TF/absl start-up lines
    assert (default / "prepare.json").exists()
    out = proc.stdout
    # One progress line as each stage starts and one when it ends, with what it did.
    for stage in ("read ml-100k", r"split \(leave-one-out\)", r"index \(sequential\)",
                  r"vocabulary \(600 pieces, SentencePiece\)", "item tries"):
        assert re.search(rf"^prepare: {stage} \.\.\.$", out, re.M), (stage, out)
        assert re.search(rf"^prepare: {stage}: done in \d+\.\d s", out, re.M), (stage, out)
    assert re.search(r"^prepare: read ml-100k: done in .*, 720 interactions$", out, re.M)
    # A task's line counts its examples per split (they are rendered when read, not here).
    tasks_done = re.findall(r"^prepare: task (\d)/7 (\w+): done in [\d.]+ s, train ([\d,]+)",
                            out, re.M)
    assert [t[:2] for t in tasks_done] == [
        ("1", "seq_seqidx"), ("2", "seqrec_seqidx"), ("3", "direct_seqidx"), ("4", "rating"),
        ("5", "binary"), ("6", "grounding_seqidx"), ("7", "profile")], out
    assert all(int(t[2].replace(",", "")) > 0 for t in tasks_done)
    assert f"prepared ml-100k -> {default}" in out

    after = _run(["--list_tasks"], env)
    assert after.returncode == 0 and after.stderr == "", after.stderr
    names = after.stdout.split()
    assert {"ml100k_seq_seqidx", "ml100k_rec_mix", "ml100k_rating"} <= set(names), names
    assert " W " not in after.stdout
    loud = _run(["--list_tasks", "--verbose"], env)  # TF's start-up notices are back
    from flanrec.frontend import jobs

    assert any(p.search(loud.stderr) for p in jobs.STDERR_NOISE), loud.stderr[:2000]

    # A default never replaces another dataset's data: FLANREC_DATA_DIR holding ml-100k and
    # `prepare --dataset ml-1m` without --out is refused, naming both.
    refused = _run(["--dataset", "ml-1m", "--offline"], {**env, "FLANREC_DATA_DIR": str(default)})
    assert refused.returncode == 2
    assert "holds prepared 'ml-100k', not 'ml-1m'; pass --out" in refused.stderr


def test_every_job_defaults_to_the_same_dir(tmp_path, monkeypatch):
    from flanrec.baselines.__main__ import parse_args as baseline_args
    from flanrec.data import locations
    from flanrec.prepare.cli import default_out
    from flanrec.quickstart import job as quickstart

    monkeypatch.delenv("FLANREC_DATA_DIR", raising=False)
    monkeypatch.setenv("FLANREC_CACHE", str(tmp_path))
    import tasks.movielens as movielens

    want = str(tmp_path / "prepared" / "ml-100k")
    assert default_out("ml-100k") == want == locations.default_data_dir()
    assert movielens.data_dir() == [want]
    assert quickstart.parse_args([]).data_dir is None  # resolved to the same default
    assert baseline_args(["--out", "x"]).data_dir is None
    monkeypatch.setenv("FLANREC_DATA_DIR", str(tmp_path / "mine"))
    assert default_out("ml-100k") == str(tmp_path / "mine") == locations.default_data_dir()
    assert movielens.data_dir() == [str(tmp_path / "mine")]
