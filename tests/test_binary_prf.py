"""Binary family: precision, recall and F1 beside AUC and accuracy in metrics.json and
metrics.md, for the model and for the popularity/bias baselines, with the threshold said
(yes when p_yes >= 0.5); each baseline's yes is its own, chosen on validation."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from flanrec import metrics as M
from flanrec.baselines import bias, families
from flanrec.baselines.__main__ import main as baselines_main
from flanrec.data import prepared
from flanrec.data.examples import LIKE_THRESHOLD
from flanrec.eval import cli as eval_cli
from flanrec.prepare import cli as prepare_cli


@pytest.fixture(scope="module")
def rated_dir(tmp_path_factory) -> Path:
    """A prepared dir of a small rated log with the binary task (no vocabulary needed)."""
    root = tmp_path_factory.mktemp("binary")
    rng = random.Random(3)
    lines = ["user_id,item_id,timestamp,rating"]
    for u in range(60):
        taste = rng.random()
        for t, i in enumerate(rng.sample(range(25), rng.randint(5, 12))):
            liked = rng.random() < (0.8 if (i % 2 == 0) == (taste > 0.5) else 0.3)
            rating = rng.choice([4, 5]) if liked else rng.choice([1, 2, 3])
            lines.append(f"u{u},i{i},{100 + t},{rating}")
    (root / "log.csv").write_text("\n".join(lines) + "\n")
    out = root / "out"
    assert prepare_cli.main(["--dataset", "csv", "--raw_dir", str(root / "log.csv"),
                             "--rating_col", "rating", "--families", "binary",
                             "--task_prefix", "rated", "--out", str(out), "--offline"]) == 0
    return out


def test_p_yes_keeps_the_order_and_puts_the_threshold_at_one_half():
    scores = [1.0, 2.0, 3.4, 3.5, 3.6, 4.9, 5.0, 6.0, 0.0]
    ps = [families.p_yes(s, 1.0, 5.0, 3.5) for s in scores]
    assert [p >= 0.5 for p in ps] == [s >= 3.5 for s in scores]
    ordered = sorted(zip(scores, ps, strict=True))
    assert all(a[1] <= b[1] for a, b in zip(ordered, ordered[1:], strict=False))
    assert families.p_yes(3.5, 1.0, 5.0, 3.5) == 0.5 and families.p_yes(5.0, 1, 5, 3.5) == 1.0
    # Never yes (no threshold on validation beat saying no): every p_yes under 0.5, ordered.
    never = [families.p_yes(s, 1.0, 5.0, math.inf) for s in (1.0, 3.0, 5.0)]
    assert never == sorted(never) and max(never) < 0.5 and never[0] < never[-1]
    assert families.p_yes(3.0, 1.0, 5.0) == 0.5  # no threshold: linear, as before


def test_yes_threshold_is_the_best_accuracy_on_validation(rated_dir):
    split = prepared.load_split(str(rated_dir))
    model, _ = bias.fit_on_validation(split)
    t = families.yes_threshold(model.predict, split)
    valid = bias.held_out(split, "validation")
    labels = [int(r >= LIKE_THRESHOLD) for _, _, r in valid]
    scores = [model.predict(u, i) for u, i, _ in valid]

    def accuracy(th: float) -> float:
        return sum((s >= th) == bool(y) for s, y in zip(scores, labels, strict=True)) / len(valid)

    assert all(accuracy(t) >= accuracy(c) for c in [*scores, math.inf])


def test_metrics_and_table_show_precision_recall_f1_for_model_and_baselines(rated_dir,
                                                                            tmp_path):
    split = prepared.load_split(str(rated_dir))
    test = bias.held_out(split, "test")
    # The model's predictions, as flanrec.infer MODE=score writes them on the binary task.
    p_model = [0.9 if (int(i[1:]) % 2 == 0) else 0.2 for _, i, _ in test]
    labels = [int(r >= LIKE_THRESHOLD) for _, _, r in test]
    infer = tmp_path / "infer"
    infer.mkdir()
    rows = [{"task": "rated_binary", "split": "test", "mode": "score", "index": k, "user": u,
             "inputs": "", "targets": "yes" if y else "no", "target_item": i,
             "template_idx": 0, "template_type": "seen", "candidates": ["no", "yes"],
             "scores": [math.log(1 - p), math.log(p)], "p_yes": p, "label": y}
            for k, ((u, i, _), p, y) in enumerate(zip(test, p_model, labels, strict=True))]
    (infer / "rated_binary-score.jsonl-00000-of-00001").write_text(
        "".join(json.dumps(r) + "\n" for r in rows))
    base = tmp_path / "baselines"
    assert baselines_main(["--data_dir", str(rated_dir), "--model", "families",
                           "--out", str(base)]) == 0
    out = tmp_path / "eval"
    assert eval_cli.main(["--predictions", str(infer), "--baselines", str(base),
                          "--data_dir", str(rated_dir), "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    want = M.binary_metrics(labels, [int(p >= 0.5) for p in p_model], p_model)
    for key in ("auc", "accuracy", "precision", "recall", "f1"):
        assert m[key] == pytest.approx(want[key])  # the only model task: flat keys
    assert m["yes_at_p_yes"] == 0.5
    # Each baseline: its own score's decision at the threshold chosen on validation.
    thresholds = json.loads((base / "families.json").read_text())["binary_yes_thresholds"]
    model, _ = bias.fit_on_validation(split)
    from flanrec.baselines import popularity

    counts = popularity.train_counts(split)
    for name, score in (("bias_binary", model.predict),
                        ("popularity_binary", lambda u, i: counts.get(i, 0))):
        t = thresholds[name]["score_at_p_yes_0.5"]
        assert t == families.yes_threshold(score, split)
        raw = [float(score(u, i)) for u, i, _ in test]
        expect = M.binary_metrics(labels, [int(s >= t) for s in raw], raw)
        for key in ("auc", "accuracy", "precision", "recall", "f1"):
            assert m[f"{name}/{key}"] == pytest.approx(expect[key]), (name, key)
        assert m[f"{name}/yes_at_p_yes"] == 0.5
    table = (out / "metrics.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| task | mode |"))
    assert all(h in header for h in ("AUC", "accuracy", "precision", "recall", "F1"))
    for name in ("rated_binary", "bias_binary", "popularity_binary"):
        row = next(line for line in table.splitlines() if line.startswith(f"| {name} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert "–" not in cells[4:9], row  # AUC, accuracy, precision, recall, F1 all shown
    assert "p_yes >= 0.5" in table
