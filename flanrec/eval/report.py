"""Turn evaluated systems into what a person reads: a Markdown table and an HR/NDCG@K plot.

Kept apart from the metric code so the numbers (flanrec.metrics) never depend on matplotlib,
and the plot uses the Agg backend so it works on a headless TPU VM or CI runner.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

from flanrec.files import storage

# (header, metrics key, format): the protocol's headline numbers first, then the
# multi-target and diagnostic columns. "{k}" marks the K-dependent keys.
RANKING_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("HR@1", "hr@1", ".4f"),
    ("HR@5", "hr@5", ".4f"),
    ("NDCG@5", "ndcg@5", ".4f"),
    ("HR@10", "hr@10", ".4f"),
    ("NDCG@10", "ndcg@10", ".4f"),
    ("MRR@10", "mrr@10", ".4f"),
    ("P@10", "precision@10", ".4f"),
    ("R@10", "recall@10", ".4f"),
    ("F1@10", "f1@10", ".4f"),
    ("coverage@10", "coverage@10", ".4f"),
    ("invalid", "invalid", ".0f"),
    ("duplicates", "duplicates", ".0f"),
    ("users", "num_users", ".0f"),
)
OTHER_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("RMSE", "rmse", ".4f"),
    ("MAE", "mae", ".4f"),
    ("AUC", "auc", ".4f"),
    ("accuracy", "accuracy", ".4f"),
    ("precision", "precision", ".4f"),
    ("recall", "recall", ".4f"),
    ("F1", "f1", ".4f"),
    ("examples", "num_examples", ".0f"),
)


def _cell(metrics: Mapping[str, float], key: str, fmt: str) -> str:
    value = metrics.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return format(value, fmt)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def markdown(systems: Sequence[tuple[str, Any]], ks: Sequence[int] = (1, 5, 10, 20)) -> str:
    """One table of the ranking systems (model tasks, then baselines) and, if any, a second
    one of the rating/binary tasks. ``systems`` are (name, Section) pairs."""
    del ks  # the columns are the protocol's fixed set; the JSON has every K
    ranking = [(n, s) for n, s in systems if s.kind == "ranking"]
    other = [(n, s) for n, s in systems if s.kind in ("rating", "binary")]
    own = [(n, s) for n, s in systems if s.kind == "task"]
    parts = []
    if ranking:
        split = ", ".join(sorted({s.split for _, s in ranking}))
        rows = [[f"{n} (baseline)" if s.baseline else n,
                 *(_cell(s.metrics, key, fmt) for _, key, fmt in RANKING_COLUMNS)]
                for n, s in ranking]
        parts.append(f"Ranking ({split} split)\n\n"
                     + _table(["system", *(h for h, _, _ in RANKING_COLUMNS)], rows))
    if other:
        rows = [[n, s.mode, *(_cell(s.metrics, key, fmt) for _, key, fmt in OTHER_COLUMNS)]
                for n, s in other]
        parts.append("Rating and binary tasks\n\n"
                     + _table(["task", "mode", *(h for h, _, _ in OTHER_COLUMNS)], rows))
        yes_at = sorted({s.metrics["yes_at_p_yes"] for _, s in other
                         if s.kind == "binary" and "yes_at_p_yes" in s.metrics})
        if yes_at:
            at = " or ".join(f"{v:g}" for v in yes_at)
            parts.append(f"Binary: accuracy, precision, recall and F1 count a yes where p_yes "
                         f">= {at} (the baselines' p_yes puts {at} at the score from which "
                         "each says yes, chosen on validation accuracy); AUC ranks by "
                         "p_yes.\n")
    if own:
        parts.append(task_metrics_markdown(own))
    partial = [(n, s.coverage) for n, s in systems
               if getattr(s, "coverage", None) is not None and s.coverage.partial]
    if partial:  # --allow_partial: numbers over part of the users must say so
        parts.append("".join(f"Partial: {n} scored {c.scored} of {c.expected} users of the "
                             "split.\n" for n, c in partial))
    return "\n".join(parts)


def plot_groups(systems: Sequence[tuple[str, Any]]) -> list[tuple[str, list[tuple[str, Any]]]]:
    """The ranking systems split by what they rank: (title, systems) for the full-ranking
    ones, then for the candidate tasks (HR@K among 20 candidates is on another scale than
    HR@K over the catalogue: one axes for both would squash the full-ranking curves)."""
    ranking = [(n, s) for n, s in systems if s.kind == "ranking"]
    full = [(n, s) for n, s in ranking if getattr(s, "layout", "") != "candidates"]
    cands = [(n, s) for n, s in ranking if getattr(s, "layout", "") == "candidates"]
    groups = []
    if full or not cands:
        groups.append(("full ranking", full))
    if cands:
        groups.append(("among each query's candidates", cands))
    return groups


def plot_at_k(systems: Sequence[tuple[str, Any]], ks: Sequence[int], path: str) -> None:
    """HR@K and NDCG@K against K, one line per ranking system; written atomically as PNG.

    Full-ranking systems and candidate tasks get a row of axes each (`plot_groups`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = plot_groups(systems)
    ks = sorted(ks)
    fig, axes = plt.subplots(len(groups), 2, figsize=(10, 4 * len(groups)), squeeze=False)
    for row, (title, ranking) in zip(axes, groups, strict=True):
        for ax, metric in zip(row, ("hr", "ndcg"), strict=True):
            for name, s in ranking:
                ys = [s.metrics.get(f"{metric}@{k}", math.nan) for k in ks]
                ax.plot(ks, ys, marker="o", linestyle="--" if s.baseline else "-", label=name)
            ax.set_xlabel("K")
            ax.set_ylabel(f"{metric.upper()}@K")
            ax.set_title(f"{metric.upper()}@K, {title}", fontsize=10)
            ax.set_xticks(ks)
            ax.grid(alpha=0.3)
        if ranking:
            row[0].legend(fontsize=8)
    splits = sorted({s.split for _, group in groups for _, s in group})
    fig.suptitle(f"HR@K and NDCG@K ({', '.join(splits)})")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    storage.write_atomic(path, buf.getvalue())  # never half a plot, local or gs://


def paired_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The paired-bootstrap rows of `flanrec.eval` as a Markdown table."""
    lines = ["| model | baseline | metric | model | baseline | difference | 95% interval | "
             "relative | p | users |", "|---|---|---|---:|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['baseline']} | {r['metric']} | {r['a']:.4f} | "
                     f"{r['b']:.4f} | {r['diff']:+.4f} | [{r['lo']:+.4f}, {r['hi']:+.4f}] | "
                     f"{100 * r['relative']:+.1f}% | {r['p_value']:.3f} | "
                     f"{r['num_users']:.0f} |")
    return "\n".join(lines) + "\n"


def task_metrics_markdown(systems: Sequence[tuple[str, Any]]) -> str:
    """Decoded tasks: one row per task, one column per key its metric fns returned (tasks
    with other metric fns leave a cell empty), then the example and empty-answer counts."""
    keys: list[str] = []
    for _, s in systems:
        keys += [k for k in s.metrics
                 if k not in keys and k not in ("num_examples", "empty_predictions")]
    rows = [[n, s.split, *(_cell(s.metrics, k, ".4f") for k in keys),
             _cell(s.metrics, "empty_predictions", ".0f"),
             _cell(s.metrics, "num_examples", ".0f")] for n, s in systems]
    return ("Decoded tasks (each task's own postprocess_fn and metric_fns)\n\n"
            + _table(["task", "split", *keys, "empty", "examples"], rows))


def unseen_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """Seen (`test`) against unseen (`test_unseen`, held-out templates) per task and metric:
    both values, the relative difference and, for ranking metrics, the paired interval."""
    lines = ["Seen vs unseen templates (test vs test_unseen)", "",
             "| task | metric | seen | unseen | relative | difference, 95% interval |",
             "|---|---|---:|---:|---:|---|"]
    for r in rows:
        interval = "–" if r.get("lo") is None else \
            f"{r['diff']:+.4f} [{r['lo']:+.4f}, {r['hi']:+.4f}]"
        rel = "–" if r["relative"] != r["relative"] else f"{100 * r['relative']:+.1f}%"
        lines.append(f"| {r['task']} | {r['metric']} | {r['seen']:.4f} | {r['unseen']:.4f} | "
                     f"{rel} | {interval} |")
    return "\n".join(lines) + "\n"
