"""Template ensembles: rank each user under several instruction phrasings and fuse.

For every template of the sequential family (seen or held-out) the evaluation queries are
rendered again from the prepared split (same history, same target, only the wording differs),
decoded with the same trie-constrained, seen-masked beam search as ``flanrec.infer``, and then
fused. For ``mean``/``weighted`` the union of all members' top-K items is re-scored under every
template, so each item's mean log-probability is exact rather than a guess for items one
template did not list. ``weighted`` takes its weights from each template's validation
NDCG@10, so choosing weights never looks at test targets.

Every member's own predictions are written too (task ``{task}-t{idx}``), so the report can put
the ensemble beside the best single template from the same run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from flanrec import metrics as metrics_lib
from flanrec.checkpoints import load_params_any
from flanrec.data import prepared, splits
from flanrec.data import templates as templates_lib
from flanrec.data import vocab as vocab_lib
from flanrec.data.families import seq
from flanrec.ensemble import fusion
from flanrec.ensemble.files import check_output, claim_output
from flanrec.files import outputs, storage
from flanrec.files.predictions import shard_name, write_shard
from flanrec.frontend.progress import Progress
from flanrec.infer import modes


@dataclasses.dataclass(frozen=True)
class TemplateEnsembleOptions:
    """What to ensemble and how (see ``python -m flanrec.ensemble templates --help``)."""

    templates: tuple[int, ...]
    method: str = "mean"
    split: str = "test"
    num_beams: int = 20
    input_length: int = 512
    target_length: int = 16
    batch_size: int = 32
    index_method: str | None = None
    temperature: float | None = None


class _Resources:
    """The model, vocabulary, trie and split of one prepared dir, loaded once."""

    def __init__(self, checkpoint: str, data_dir: str, index_method: str | None):

        info = prepared.read_prepare_json(data_dir)
        self.method = index_method or info["index_methods"][0]
        self.task_prefix = info.get("task_prefix") or ""
        self.config, self.params = load_params_any(checkpoint)
        self.vocab = vocab_lib.vocabulary_for_prepared(data_dir)
        if self.vocab.vocab_size > self.config.vocab_size:
            raise ValueError(f"{data_dir}: its vocabulary has {self.vocab.vocab_size} ids but "
                             f"the checkpoint embeds {self.config.vocab_size}")
        self.trie, items = prepared.item_trie(data_dir, self.vocab, self.method)
        self.index = prepared.load_index(data_dir, self.method)
        self.decoder = modes.ItemDecoder(items, [self.index.id_of(i) for i in items],
                                         self.vocab.encode, self.vocab.decode)
        self.col = {item: j for j, item in enumerate(items)}
        self.split = prepared.load_split(data_dir)
        self.meta = prepared.load_meta(data_dir)
        self.predictor = modes.TriePredictor(self.config, self.trie)


def _queries(res: _Resources, split_name: str, template: int) -> list[dict[str, Any]]:

    return list(seq.seq_examples(res.split, res.index, res.meta, split_name=split_name,
                                 template_idx=template, task_prefix=""))


def _encode_inputs(res: _Resources, rows: Sequence[dict[str, Any]], length: int,
                   batch: int) -> np.ndarray:
    enc = np.zeros((batch, length), np.int32)
    for r, ex in enumerate(rows):
        toks = list(res.vocab.encode(ex["inputs"]))[: length - 1] + [res.vocab.eos_id]
        enc[r, : len(toks)] = toks
    return enc


def _seen_cols(res: _Resources, split_name: str) -> dict[str, list[int]]:

    stage = "test" if split_name.startswith("test") else "validation"
    return {seq.user: [res.col[i] for i in splits.seen_items(seq, stage) if i in res.col]
            for seq in res.split.users}


def predict_member(res: _Resources, opts: TemplateEnsembleOptions, split_name: str,
                   template: int, progress: bool = True) -> list[dict[str, Any]]:
    """One template's top-K per user, in the inference output's predict format."""

    rows = _queries(res, split_name, template)
    seen = _seen_cols(res, split_name)
    b, k = opts.batch_size, opts.num_beams
    out: list[dict[str, Any]] = []
    counter = Progress(f"ensemble: template {template} {split_name}", total=len(rows),
                       log=None if progress else (lambda _: None))
    for lo in range(0, len(rows), b):
        chunk = rows[lo: lo + b]
        enc = _encode_inputs(res, chunk, opts.input_length, b)
        allowed = modes.allowed_from_seen(len(res.decoder.items),
                                          [seen[ex["user"]] for ex in chunk]
                                          + [[]] * (b - len(chunk)))
        seqs, scores = res.predictor(res.params, enc, k, allowed, None, 0.0)
        found = modes.items_from_beams(seqs[: len(chunk)], scores[: len(chunk)], res.decoder,
                                       res.vocab.eos_id, k)
        for n, (ex, f) in enumerate(zip(chunk, found, strict=True)):
            out.append({
                "task": "", "split": split_name, "mode": "predict", "index": lo + n,
                "user": ex["user"], "inputs": ex["inputs"], "targets": ex["targets"],
                "target_item": ex["target_item"], "template_idx": template,
                "template_type": ex["_template_type"],
                "items": [res.decoder.items[j] for j in f["items"]],
                "ids": [res.decoder.id_strings[j] for j in f["items"]],
                "scores": [float(s) for s in f["scores"]],
                "invalid": f["invalid"], "duplicates": f["duplicates"]})
        counter.update(len(chunk))
    counter.finish()
    return out


def rescore_union(res: _Resources, opts: TemplateEnsembleOptions, split_name: str,
                  templates: Sequence[int], members: Sequence[Sequence[dict[str, Any]]]
                  ) -> list[list[dict[str, float]]]:
    """tables[m][u]: item -> log-probability under template m, for the union of all members'
    lists of user u (exact: every template scores every fused item)."""

    n_users = len(members[0])
    unions = []
    for u in range(n_users):
        seen: dict[str, None] = {}
        for member in members:
            for item in member[u]["items"]:
                seen.setdefault(item, None)
        unions.append(list(seen))
    width = max((len(x) for x in unions), default=1)
    id_tokens = {}
    tables: list[list[dict[str, float]]] = []
    b = opts.batch_size
    for template in templates:
        rows = _queries(res, split_name, template)
        per_user: list[dict[str, float]] = []
        counter = Progress(f"ensemble: rescore the union under template {template}",
                           total=n_users)
        for lo in range(0, n_users, b):
            chunk = rows[lo: lo + b]
            enc = _encode_inputs(res, chunk, opts.input_length, b)
            cands = np.zeros((b, width, opts.target_length), np.int32)
            cands[:, :, 0] = res.vocab.eos_id  # padding candidates: "EOS only", ignored
            for r, union in enumerate(unions[lo: lo + b]):
                for c, item in enumerate(union):
                    if item not in id_tokens:
                        id_tokens[item] = modes.encode_candidates(
                            [res.index.id_of(item)], res.vocab.encode, res.vocab.eos_id,
                            opts.target_length)[0]
                    cands[r, c] = id_tokens[item]
            scores = modes.score_candidates(res.config, res.params, enc, cands)
            for r, union in enumerate(unions[lo: lo + len(chunk)]):
                per_user.append({item: float(scores[r, c]) for c, item in enumerate(union)})
            counter.update(len(chunk))
        counter.finish()
        tables.append(per_user)
    return tables


def ndcg_at_10(records: Sequence[dict[str, Any]]) -> float:
    """Validation NDCG@10 of one member (lists are already masked)."""
    m = metrics_lib.ranking_metrics([r["items"] for r in records],
                                    [r["target_item"] for r in records], ks=(10,))
    return float(m["ndcg@10"])


@outputs.releases_locks
def run_template_ensemble(checkpoint: str, data_dir: str, out_dir: str,
                          opts: TemplateEnsembleOptions) -> dict[str, Any]:
    """Predict under each template, fuse, and write members + ensemble as JSONL."""

    if len(opts.templates) < 2:
        raise ValueError("a template ensemble needs at least 2 templates")
    for t in opts.templates:
        try:
            templates_lib.template_type(seq.FAMILY.template_families[0], t)
        except IndexError as e:  # names the bad index and how many there are
            raise ValueError(f"--templates: {e}") from None
    if opts.method not in fusion.METHODS:
        raise ValueError(f"unknown fusion method {opts.method!r}; choose one of "
                         f"{fusion.METHODS}")
    check_output(out_dir)  # before the checkpoint is read
    res = _Resources(checkpoint, data_dir, opts.index_method)
    task = f"{res.task_prefix}_seq_ens" if res.task_prefix else "seq_ens"
    weights = None
    summary: dict[str, Any] = {"templates": list(opts.templates), "method": opts.method}
    if opts.method == "weighted":
        val = [predict_member(res, opts, "validation", t) for t in opts.templates]
        val_ndcg = [ndcg_at_10(m) for m in val]
        weights = fusion.weights_from_metric(val_ndcg, opts.temperature)
        summary["validation_ndcg@10"] = dict(zip(map(str, opts.templates), val_ndcg,
                                                 strict=True))
        summary["weights"] = weights
    members = [predict_member(res, opts, opts.split, t) for t in opts.templates]
    out_dir = claim_output(out_dir)
    for t, member in zip(opts.templates, members, strict=True):
        for r in member:
            r["task"] = f"{task}-t{t}"
        write_shard(storage.join(out_dir, shard_name(f"{task}-t{t}", "predict")), member)
    if opts.method in ("mean", "weighted"):
        tables = rescore_union(res, opts, opts.split, opts.templates, members)
    fused = []
    for u in range(len(members[0])):
        if opts.method in ("mean", "weighted"):
            ranked = fusion.fuse(opts.method, tables=[t[u] for t in tables], weights=weights,
                                 top_k=opts.num_beams)
        else:
            ranked = fusion.fuse(opts.method, lists=[m[u]["items"] for m in members],
                                 weights=weights, top_k=opts.num_beams)
        rec = dict(members[0][u])
        rec.update(task=f"{task}-{opts.method}", template_idx=-1, template_type="ensemble",
                   items=[i for i, _ in ranked], ids=[res.index.id_of(i) for i, _ in ranked],
                   scores=[s for _, s in ranked],
                   invalid=sum(m[u]["invalid"] for m in members),
                   duplicates=sum(m[u]["duplicates"] for m in members))
        fused.append(rec)
    path = storage.join(out_dir, shard_name(f"{task}-{opts.method}", "predict"))
    write_shard(path, fused)
    summary["path"] = path
    return summary
