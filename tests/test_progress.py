"""`flanrec.frontend.progress`: the one progress line every job prints (a fake clock, no sleeping).

Its use on a real prepare run (stage lines, one line per task family with examples/s) is in
tests/test_data_dir.py; on inference in tests/test_infer_job.py.
"""

from __future__ import annotations

import io

import pytest

from flanrec.frontend.progress import Progress, format_eta, stage


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_lines_with_total_rate_and_eta_at_most_every_few_seconds():
    clock, out = Clock(), io.StringIO()
    p = Progress("validation @ step 10", total=40, unit="batches", every=5.0, stream=out,
                 clock=clock)
    p.update(1)  # includes compilation: counted, not timed
    clock.now += 2.0
    p.update(4)  # 4 batches in 2 s, but only 2 s since the start: no line yet
    assert out.getvalue() == ""
    clock.now += 4.0
    p.update(6)  # 10 timed batches in 6 s
    assert out.getvalue() == ("validation @ step 10: 11/40 batches (28%) | 1.7 batches/s | "
                              "ETA 17s\n")
    p.print()  # the same line again is not repeated
    assert out.getvalue().count("\n") == 1


def test_unknown_total_counts_and_rates_without_eta_and_finish_line():
    clock, lines = Clock(), []
    p = Progress("prepare: task 1/6 seq_seqidx", unit="examples", log=lines.append,
                 clock=clock, untimed_first=False, every=1.0)
    counted = list(p.wrap(range(30_000)))
    assert counted == list(range(30_000)) and p.done == 30_000
    assert lines == []  # the clock never moved
    clock.now += 2.0
    p.update(10_000)
    assert lines == ["prepare: task 1/6 seq_seqidx: 40,000 examples | 20,000.0 examples/s"]
    assert p.finish("splits train, test") == (
        "prepare: task 1/6 seq_seqidx: 40,000 examples in 2.0 s (20,000.0 examples/s), "
        "splits train, test")
    assert lines[-1].endswith("splits train, test")


def test_resumed_units_count_but_do_not_speed_up_the_rate():
    clock, out = Clock(), io.StringIO()
    p = Progress("infer t", total=1000, stream=out, clock=clock)
    p.skip(500)
    p.update(10)
    clock.now += 10.0
    p.update(100)
    assert "610/1,000 users (61%), 500 resumed | 10.0 users/s | ETA 39s" in out.getvalue()


def test_stage_says_when_it_starts_and_how_long_it_took():
    clock, lines = Clock(), []
    with stage("prepare: read ml-100k", log=lines.append, clock=clock) as info:
        clock.now += 2.25
        info["note"] = "100,000 interactions"
    assert lines == ["prepare: read ml-100k ...",
                     "prepare: read ml-100k: done in 2.2 s, 100,000 interactions"]
    lines.clear()
    with pytest.raises(RuntimeError), stage("prepare: split", log=lines.append, clock=clock):
        raise RuntimeError("boom")
    assert lines == ["prepare: split ..."]  # no "done" for a stage that failed


def test_format_eta():
    assert format_eta(42.4) == "42s" and format_eta(192) == "0:03:12"
    assert format_eta(float("nan")) == "?" and format_eta(float("inf")) == "?"
