"""The offline inference job: every example of a task split, once, into JSONL shards.

Order of work per task: resolve what the task is (family, indexing, trie, seen items) →
open the chunk writer (resume) → read the split with no shuffle and no repeat → cut it into
chunks → batch each unfinished chunk (the last batch padded, the pad rows dropped) → run the
mode → write the chunk → assemble this host's shard.

Host sharding: every host reads the split in the same deterministic order and keeps every
``process_count``-th example starting at ``process_index`` (``tf.data.Dataset.shard``,
exactly what seqio does when a source has fewer files than hosts). We do not let seqio shard
by *file* here because then an example's position in the split — the ``index`` every record
carries, which the evaluation and the resume logic rely on — would be lost; reading the
split is cheap next to decoding it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from flanrec.checkpoints import load_checkpoint
from flanrec.data import layout, prepared, splits
from flanrec.files import outputs, predictions, storage
from flanrec.frontend.progress import Progress
from flanrec.infer import modes, taskinfo
from flanrec.infer.taskinfo import InferenceConfigError, TaskInfo
from flanrec.infer.writer import ChunkWriter
from flanrec.model.config import T5Config
from flanrec.model.params import flatten

log = logging.getLogger("flanrec.infer")

SLEEP_ENV = "FLANREC_INFER_TEST_SLEEP_PER_CHUNK"
"""Test hook: seconds to sleep after each chunk is written (lets a test kill a run between
chunks deterministically). Never set in normal use."""


RANKERS = ("auto", "one_pass", "beam_search")


@dataclasses.dataclass(frozen=True)
class InferenceOptions:
    """Everything the job needs besides the model: the gin macros of gin/runs/infer.gin."""

    output_dir: str
    task_feature_lengths: Mapping[str, int]
    split: str = "test"
    batch_size: int = 32
    mode: str = "predict"
    num_beams: int = 20
    mask_seen: bool = True
    constrained: bool = True
    length_penalty: float = 0.0
    chunk_size: int = 256
    candidate_block: int = 256
    progress_every: float = 5.0
    overwrite: bool = False  # recompute every task from scratch (OVERWRITE=True)
    # How predict mode ranks items (RANKER): "auto" takes one forward pass where every item
    # is one token and the target is one item after a decoder prefix (seqrec), beam search
    # over the item trie elsewhere; "one_pass" insists on the former, "beam_search" on the
    # latter. Both give the same items and scores (up to float rounding) where both apply.
    ranker: str = "auto"


@dataclasses.dataclass(frozen=True)
class CheckpointIdentity:
    """The checkpoint a run reads: where (as given, and the directory actually read), its
    step, and a sha256 over its parameters, so a resumed run can tell it is the same model
    (a MODEL_DIR resolves to whatever step is best or latest *now*)."""

    path: str
    resolved: str
    step: int | None
    params_sha256: str


def params_sha256(params: Any) -> str:
    """sha256 over every parameter's name, dtype, shape and bytes, in name order."""

    h = hashlib.sha256()
    for name, value in sorted(flatten(params).items()):
        arr = np.ascontiguousarray(np.asarray(value))
        h.update(f"{name}\0{arr.dtype.str}\0{arr.shape}\0".encode())
        h.update(arr.reshape(-1).view(np.uint8))
    return h.hexdigest()


def _text(x: Any) -> str:
    if isinstance(x, bytes):
        return x.decode("utf-8", errors="replace")
    if isinstance(x, np.ndarray) and x.ndim == 0:
        return _text(x.item())
    return str(x)


def _host() -> tuple[int, int]:
    import jax

    return jax.process_index(), jax.process_count()


def task_examples(task_name: str, split: str, lengths: Mapping[str, int], host: int,
                  hosts: int) -> Iterator[tuple[int, dict[str, Any]]]:
    """(index in the split, numpy example) for this host's examples, in split order."""
    import seqio

    task = seqio.get_mixture_or_task(task_name)
    ds = task.get_dataset(dict(lengths), split=split, shuffle=False, num_epochs=1,
                          use_cached=False, seed=None)
    if hosts > 1:
        ds = ds.shard(hosts, host)
    for j, ex in enumerate(ds.as_numpy_iterator()):
        yield host + j * hosts, ex


def _chunks(it: Iterator[tuple[int, dict[str, Any]]], size: int
            ) -> Iterator[tuple[int, list[tuple[int, dict[str, Any]]]]]:
    chunk: list[tuple[int, dict[str, Any]]] = []
    n = 0
    for item in it:
        chunk.append(item)
        if len(chunk) == size:
            yield n, chunk
            n, chunk = n + 1, []
    if chunk:
        yield n, chunk


class TaskRunner:
    """One task's resources (vocabulary, trie, item map, seen items) and its mode."""

    def __init__(self, info: TaskInfo, config: T5Config, params: Any,
                 opts: InferenceOptions):
        import seqio

        self.info = info
        self.config = config
        self.params = params
        self.opts = opts
        task = seqio.get_mixture_or_task(info.name)
        self.vocab = task.output_features["targets"].vocabulary
        self.in_len = int(opts.task_feature_lengths["inputs"])
        self.tgt_len = int(opts.task_feature_lengths["targets"])
        self.eos = int(self.vocab.eos_id)
        if self.vocab.vocab_size > config.vocab_size:
            raise InferenceConfigError(
                f"{info.name} tokenizes with {self.vocab.vocab_size} ids but the checkpoint's "
                f"model embeds only {config.vocab_size}")
        self.decoder: modes.ItemDecoder | None = None
        self.item_col: dict[str, int] = {}
        self.seen: dict[str, list[int]] = {}
        self.predictor: modes.TriePredictor | None = None
        if info.target_kind == "item" and opts.mode != taskinfo.DECODE:
            self._load_items()
        if opts.mode == "predict":
            stage = taskinfo.stage_of(opts.split)
            # A family whose answer is another item than the held-out one (it may be a seen
            # item) is not masked: masking would forbid the very answer.
            if opts.mask_seen and stage is not None and info.held_out_target:
                self._load_seen(stage)
            trie = self._trie if opts.constrained else None
            self.predictor = modes.TriePredictor(config, trie)
        self.ranker: modes.NextItemRanker | None = None
        if opts.mode == "predict" and opts.ranker != "beam_search":
            self.ranker = self._one_pass_ranker()
        self.answers: tuple[str, ...] = ()
        if info.target_kind == "binary":
            self.answers = taskinfo.BINARY_ANSWERS
        elif info.target_kind == "rating":
            self.answers = taskinfo.RATING_ANSWERS
        self.answer_tokens = (modes.encode_candidates(self.answers, self.vocab.encode, self.eos,
                                                      self.tgt_len) if self.answers else None)
        self.all_item_tokens: np.ndarray | None = None

    # ---------------------------------------------------------------- resources
    def _load_items(self) -> None:

        method = self.info.index_method
        self._trie, items = prepared.item_trie(self.info.data_dir, self.vocab, method,
                                               end_with_eos=not self.info.is_item_sequence)
        index = prepared.load_index(self.info.data_dir, str(method))
        ids = [index.id_of(i) for i in items]
        self.decoder = modes.ItemDecoder(items, ids, self.vocab.encode, self.vocab.decode)
        self.item_col = {item: j for j, item in enumerate(items)}

    def _one_pass_ranker(self) -> modes.NextItemRanker | None:
        """The one-forward-pass ranker when it gives what beam search would (see
        `InferenceOptions.ranker`), else None; RANKER='one_pass' where it cannot is refused."""
        why = None
        tokens = None
        if self.info.target_kind != "item" or self.decoder is None:
            why = f"{self.info.name}'s targets are {self.info.target_kind}, not items"
        elif not self.info.is_item_sequence:
            why = (f"{self.info.name}'s targets end with EOS (the score of an item is then "
                   "that of its tokens and the EOS after them)")
        elif not self.opts.constrained:
            why = "CONSTRAINED=False decodes freely over the vocabulary"
        else:
            assert self.decoder is not None
            tokens = modes.one_token_items(self.decoder.id_strings, self.vocab.encode)
            if tokens is None:
                why = f"some item IDs of {self.info.name} are more than one token"
        if why is None:
            return modes.NextItemRanker(self.config, tokens)
        if self.opts.ranker == "one_pass":
            raise InferenceConfigError(f"RANKER='one_pass' ranks tasks whose target is one "
                                       f"one-token item, but {why}; use RANKER='auto'")
        return None

    @property
    def ranking_path(self) -> str:
        """Which computation ranks this task's items: "one_pass" or "beam_search"."""
        return "one_pass" if self.ranker is not None else "beam_search"

    def _load_seen(self, stage: str) -> None:

        split = prepared.load_split(self.info.data_dir)
        for seq in split.users:
            self.seen[seq.user] = [self.item_col[i] for i in splits.seen_items(seq, stage)
                                   if i in self.item_col]

    # ---------------------------------------------------------------- batching
    def _encoder_tokens(self, rows: Sequence[dict[str, Any]], batch: int) -> np.ndarray:
        enc = np.zeros((len(rows), self.in_len), np.int32)
        for r, ex in enumerate(rows):
            toks = np.asarray(ex["inputs"])[: self.in_len]
            enc[r, : len(toks)] = toks
        return modes.pad_rows(enc, batch)

    def base_record(self, index: int, ex: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "task": self.info.name, "split": self.opts.split, "mode": self.opts.mode,
            "index": int(index), "user": _text(ex.get("user", "")),
            # T5X's `inputs`: the pretokenized features (t5x/infer.py writes the same dict).
            "inputs": {"inputs_pretokenized": _text(ex.get("inputs_pretokenized", "")),
                       "targets_pretokenized": _text(ex.get("targets_pretokenized", ""))},
            "targets": _text(ex.get("targets_pretokenized", "")),
            "target_item": _text(ex.get("target_item", "")),
            "template_idx": int(ex.get("_template_idx", -1)),
            "template_type": _text(ex.get("_template_type", "")),
        }

    def _candidate_texts(self, labels: Sequence[str]) -> list[str]:
        """What the model decodes for each candidate label (an item's ID string, or the
        answer text itself), to compare with the target text."""
        if self.decoder is None:
            return list(labels)
        return [self.decoder.id_strings[self.item_col[c]] if c in self.item_col else c
                for c in labels]

    def run_batch(self, rows: list[tuple[int, dict[str, Any]]]) -> list[dict[str, Any]]:
        mode = self.opts.mode
        if mode == taskinfo.DECODE:
            return self._decode(rows)
        if mode == "predict":
            return self._predict(rows)
        if mode == "rating":
            return self._rating(rows)
        return self._score(rows)

    # ---------------------------------------------------------------- modes
    def _free_length(self) -> int:
        """Tokens an unconstrained search may generate: one item for item sequences (their
        targets hold a whole prefix), the target length otherwise."""
        if self.info.is_item_sequence and self._trie is not None:
            return self._trie.max_length
        return self.tgt_len

    def decoder_prefix(self, rows: Sequence[dict[str, Any]], batch: int
                       ) -> tuple[np.ndarray, np.ndarray]:
        """(prefix int32 [batch, P], lengths [batch]) of item-sequence examples.

        Their targets are the history's most recent items followed by the target item (no
        EOS); the decoder reads all but the target's tokens. P is fixed per task (the target
        length minus one item) so every batch compiles once; prefixes are right-aligned.
        """
        assert self._trie is not None
        item_len = self._trie.max_length
        width = max(self.tgt_len - item_len, 0)
        prefix = np.zeros((len(rows), width), np.int32)
        lengths = np.zeros(len(rows), np.int32)
        for r, ex in enumerate(rows):
            toks = np.asarray(ex["targets"])
            target = _text(ex.get("target_item", ""))
            if target in self.item_col:
                want = self.vocab.encode(self.decoder.id_strings[self.item_col[target]])
                if list(toks[-item_len:]) != list(want):
                    raise InferenceConfigError(
                        f"{self.info.name}: the targets of user {_text(ex.get('user', ''))} do "
                        f"not end with the target item's tokens: TASK_FEATURE_LENGTHS"
                        f"['targets'] ({self.tgt_len}) cut them; use at least the window "
                        f"the task was prepared with ({layout.PREPARE_FILE}: "
                        "options.seqrec_window)")
            head = toks[: max(len(toks) - item_len, 0)][-width:] if width else toks[:0]
            if len(head):
                prefix[r, width - len(head):] = head
            lengths[r] = len(head)
        return modes.pad_rows(prefix, batch), modes.pad_rows(lengths[:, None], batch)[:, 0]

    def _predict(self, rows: list[tuple[int, dict[str, Any]]]) -> list[dict[str, Any]]:
        assert self.predictor is not None and self.decoder is not None
        b, k, n = self.opts.batch_size, self.opts.num_beams, len(rows)
        enc = self._encoder_tokens([ex for _, ex in rows], b)
        seen = [self.seen.get(_text(ex.get("user", "")), []) for _, ex in rows]
        allowed = None
        if self.opts.constrained and self.seen:
            allowed = modes.allowed_from_seen(len(self.decoder.items),
                                              seen + [[]] * (b - n))
        prefix = lengths = None
        if self.info.is_item_sequence:
            prefix, lengths = self.decoder_prefix([ex for _, ex in rows], b)
        if self.ranker is not None:
            top, top_scores = self.ranker(self.params, enc, k, allowed, prefix, lengths)
            found = [{"items": [int(j) for j, s in zip(top[r], top_scores[r], strict=True)
                                if np.isfinite(s)],
                      "scores": [float(s) for s in top_scores[r] if np.isfinite(s)],
                      "invalid": 0, "duplicates": 0} for r in range(n)]
            return [self._predict_record(index, ex, f) for (index, ex), f in
                    zip(rows, found, strict=True)]
        seqs, scores = self.predictor(self.params, enc, k, allowed,
                                      None if self.opts.constrained else self._free_length(),
                                      self.opts.length_penalty, prefix, lengths)
        excluded = None if self.opts.constrained or not self.seen else [set(s) for s in seen]
        eos = -1 if self.info.is_item_sequence else self.eos
        found = modes.items_from_beams(seqs[:n], scores[:n], self.decoder, eos, k, excluded)
        return [self._predict_record(index, ex, f) for (index, ex), f in
                zip(rows, found, strict=True)]

    def _predict_record(self, index: int, ex: Mapping[str, Any], found: Mapping[str, Any]
                        ) -> dict[str, Any]:
        assert self.decoder is not None
        rec = self.base_record(index, ex)
        rec.update(items=[self.decoder.items[j] for j in found["items"]],
                   ids=[self.decoder.id_strings[j] for j in found["items"]],
                   scores=[float(s) for s in found["scores"]], invalid=found["invalid"],
                   duplicates=found["duplicates"])
        if not self.opts.constrained:
            rec["masked"] = found["masked"]
        return with_t5x_fields(rec, rec["ids"][:1], rec["scores"][:1])

    def _decode(self, rows: list[tuple[int, dict[str, Any]]]) -> list[dict[str, Any]]:
        """Free decoding (T5X's predict): the top beam's text is the prediction, every
        beam's text and score are kept; the targets are the task's own text, which eval
        reads again from the task (never from this file) to run its metric fns."""
        b, k, n = self.opts.batch_size, self.opts.num_beams, len(rows)
        enc = self._encoder_tokens([ex for _, ex in rows], b)
        seqs, scores = modes.decode_free(self.config, self.params, enc, k, self.tgt_len,
                                         self.opts.length_penalty)
        found = modes.texts_from_beams(seqs[:n], scores[:n], self.vocab.decode, self.eos)
        out = []
        for (index, ex), beams in zip(rows, found, strict=True):
            rec = self.base_record(index, ex)
            rec.update(beams=[t for t, _, _ in beams], scores=[s for _, s, _ in beams],
                       unfinished=sum(not done for _, _, done in beams))
            out.append(with_t5x_fields(rec, rec["beams"][:1], rec["scores"][:1]))
        return out

    def _score(self, rows: list[tuple[int, dict[str, Any]]]) -> list[dict[str, Any]]:
        b, n = self.opts.batch_size, len(rows)
        enc = self._encoder_tokens([ex for _, ex in rows], b)
        if self.answer_tokens is not None:
            labels = [list(self.answers)] * n
            scores = modes.score_candidates(self.config, self.params, enc, self.answer_tokens,
                                            self.opts.candidate_block)[:n]
        elif self.info.has_candidates:
            assert self.decoder is not None
            labels = [[_text(c) for c in ex["candidates"]] for _, ex in rows]
            width = max(len(c) for c in labels)
            width = -(-width // 8) * 8  # few distinct shapes: few compilations
            cands = np.zeros((b, width, self.tgt_len), np.int32)
            for r, cs in enumerate(labels):
                ids = [self.decoder.id_strings[self.item_col[c]] if c in self.item_col
                       else c for c in cs]
                cands[r, : len(cs)] = modes.encode_candidates(ids, self.vocab.encode,
                                                              self.eos, self.tgt_len)
            scores = modes.score_candidates(self.config, self.params, enc, cands,
                                            self.opts.candidate_block)[:n]
        else:  # an item task without candidates: rank the whole catalogue
            assert self.decoder is not None
            if self.all_item_tokens is None:
                self.all_item_tokens = modes.encode_candidates(
                    self.decoder.id_strings, self.vocab.encode, self.eos, self.tgt_len)
            labels = [list(self.decoder.items)] * n
            scores = modes.score_candidates(self.config, self.params, enc,
                                            self.all_item_tokens, self.opts.candidate_block)[:n]
        out = []
        for r, (index, ex) in enumerate(rows):
            rec = self.base_record(index, ex)
            rec["candidates"] = labels[r]
            rec["scores"] = [float(s) for s in scores[r, : len(labels[r])]]
            if self.info.target_kind == "binary":
                p = modes.answer_distribution(scores[r: r + 1, :2])[0]
                rec["p_yes"] = float(p[1])
                rec["label"] = int(rec["targets"].strip().lower() == "yes")
            out.append(with_t5x_score_fields(rec, self._candidate_texts(labels[r])))
        return out

    def _rating(self, rows: list[tuple[int, dict[str, Any]]]) -> list[dict[str, Any]]:
        assert self.answer_tokens is not None
        b, n = self.opts.batch_size, len(rows)
        enc = self._encoder_tokens([ex for _, ex in rows], b)
        scores = modes.score_candidates(self.config, self.params, enc, self.answer_tokens,
                                        self.opts.candidate_block)[:n]
        expected, probs = modes.expected_rating(scores, modes.rating_values(self.answers))
        out = []
        for r, (index, ex) in enumerate(rows):
            rec = self.base_record(index, ex)
            rec["expected_rating"] = float(expected[r])
            rec["rating_probs"] = {a: float(p) for a, p in zip(self.answers, probs[r],
                                                               strict=True)}
            try:
                rec["target_rating"] = float(rec["targets"])
            except ValueError:
                rec["target_rating"] = None
            best = int(np.argmax(scores[r, : len(self.answers)]))
            out.append(with_t5x_fields(rec, [self.answers[best]],
                                       [float(scores[r, best])]))
        return out


def with_t5x_fields(rec: dict[str, Any], best: Sequence[str],
                    best_score: Sequence[float]) -> dict[str, Any]:
    """Add T5X's `predict_with_aux` fields (t5x/infer.py `write_inferences_to_file`) to a
    record: `prediction` (the decoded text of the top answer: an item's ID string, a rating
    "1".."5") and `aux.scores` (its log-likelihood), so T5X post-processing reads the file.
    flanrec's own fields (the whole top-K, probabilities) stay as they are."""
    rec["prediction"] = best[0] if best else ""
    rec["aux"] = {"scores": float(best_score[0]) if best_score else None}
    return rec


def with_t5x_score_fields(rec: dict[str, Any], candidate_texts: Sequence[str]
                          ) -> dict[str, Any]:
    """Score mode: T5X's `score` (log-likelihood of the example's own target, as T5X's
    score mode gives it; None when the target is not among the candidates), plus the best
    candidate as `prediction` / `aux.scores` like predict mode."""
    scores = rec["scores"]
    target = rec["targets"].strip()
    matches = [i for i, t in enumerate(candidate_texts) if t.strip() == target]
    rec["score"] = float(scores[matches[0]]) if matches else None
    best = int(np.argmax(scores)) if scores else None
    return with_t5x_fields(rec, [candidate_texts[best]] if best is not None else [],
                           [scores[best]] if best is not None else [])


def settings_of(info: TaskInfo, checkpoint: CheckpointIdentity, opts: InferenceOptions,
                hosts: int) -> dict[str, Any]:
    """What must not change between an interrupted run and its resumption."""
    return {
        "checkpoint_step": checkpoint.step, "params_sha256": checkpoint.params_sha256,
        "task": info.name, "split": opts.split,
        "mode": opts.mode, "num_beams": opts.num_beams, "mask_seen": opts.mask_seen,
        "constrained": opts.constrained, "length_penalty": opts.length_penalty,
        "task_feature_lengths": dict(opts.task_feature_lengths),
        "chunk_size": opts.chunk_size, "process_count": hosts,
    }


def run_task(info: TaskInfo, config: T5Config, params: Any, checkpoint: CheckpointIdentity,
             opts: InferenceOptions, provenance: Mapping[str, Any] | None = None
             ) -> dict[str, Any]:
    """Infer one task split on this host; returns {path, examples, computed, seconds}.

    `provenance` (e.g. the gin config) goes into the shard's record."""
    import seqio

    host, hosts = _host()
    provenance = {**dict(provenance or {}), "task_info": {
        "family": info.family, "target_kind": info.target_kind,
        "held_out_target": info.held_out_target, "prepared": info.has_prepared_dir}}
    writer = ChunkWriter(opts.output_dir, info.name, opts.mode, host, hosts,
                         settings_of(info, checkpoint, opts, hosts),
                         {"checkpoint": checkpoint.path,
                          "checkpoint_resolved": checkpoint.resolved})
    if opts.overwrite:
        writer.reset()
    if writer.complete():
        problem = writer.check_complete()  # the same checkpoint and settings, or refused
        if problem is None:
            log.info("%s: %s exists and matches its manifest, skipping (OVERWRITE=True "
                     "recomputes it)", info.name, writer.final)
            return {"path": writer.final, "examples": None, "computed": 0, "seconds": 0.0}
        # Replaced only once the new shard is whole: until then the damaged file stays.
        log.warning("%s: %s cannot be kept (%s); recomputing it", info.name, writer.final,
                    problem)
    runner = TaskRunner(info, config, params, opts)
    if opts.mode == "predict":
        # Recorded in the manifest, not a resume setting: both paths rank the same items,
        # and a run resumed on the other one only moves scores in their last float digits.
        provenance = {**(provenance or {}), "ranker": runner.ranking_path}
        log.info("%s: ranking with %s", info.name, runner.ranking_path.replace("_", " "))
    writer.open()
    total = seqio.get_mixture_or_task(info.name).num_input_examples(opts.split)
    if total is not None and hosts > 1:
        total = len(range(host, int(total), hosts))
    progress = Progress(f"infer {info.name}/{opts.split} {opts.mode}", total,
                        opts.progress_every)
    sleep = float(os.environ.get(SLEEP_ENV, "0") or 0)
    t0 = time.time()
    count = computed = num_chunks = 0
    for chunk_id, rows in _chunks(task_examples(info.name, opts.split,
                                                opts.task_feature_lengths, host, hosts),
                                  opts.chunk_size):
        num_chunks = chunk_id + 1
        count += len(rows)
        if writer.has(chunk_id):
            progress.skip(len(rows))
            continue
        records: list[dict[str, Any]] = []
        for lo in range(0, len(rows), opts.batch_size):
            batch = rows[lo: lo + opts.batch_size]
            records += runner.run_batch(batch)
            progress.update(len(batch))
        writer.write(chunk_id, records)
        computed += len(rows)
        if sleep:
            time.sleep(sleep)
    progress.print()
    path = writer.finalize(num_chunks, provenance)
    return {"path": path, "examples": count, "computed": computed,
            "seconds": time.time() - t0, "users_per_sec": progress.rate()}


def resolve_tasks(name: str, split: str, mode: str) -> list[TaskInfo]:
    """The tasks to run: `name` itself, or each sub-task of a mixture that has the split
    and whose targets fit the mode (others are logged and skipped). `mode` as given, with
    no automatic choice: what the rank validation (always item ranking) asks for."""
    return [info for info, _ in resolve_runs(name, split, mode, auto=False)]


def resolve_runs(name: str, split: str, mode: str, auto: bool = True
                 ) -> list[tuple[TaskInfo, str]]:
    """(task, the mode it runs in) for `name` or each sub-task of a mixture.

    `auto`: MODE='predict' on a task whose targets are text (a family such as
    `tasks/next_genre.py`, or a JSON-lines task that reads no prepared dir) decodes freely
    (`taskinfo.resolve_mode`); item tasks keep trie-constrained ranking."""
    import seqio

    try:
        provider = seqio.get_mixture_or_task(name)
    except ValueError as e:
        raise InferenceConfigError(
            f"MIXTURE_OR_TASK_NAME {name!r} is not registered (is MIXTURE_OR_TASK_MODULE / "
            "DATA_DIR pointing at the prepared data?)") from e
    is_mixture = isinstance(provider, seqio.Mixture)
    names = [t.name for t in provider.tasks] if is_mixture else [name]
    out = []
    for n in names:
        info = taskinfo.find_task_info(n)
        if info is None:
            if not auto and mode != taskinfo.DECODE:
                raise InferenceConfigError(f"{n}: not a flanrec task (its seqio source does "
                                           "not read a prepared dir)")
            info = taskinfo.plain_task_info(n)
        task_mode = taskinfo.resolve_mode(info, mode) if auto else mode
        problem = taskinfo.check_mode(info, task_mode)
        if problem is None and split not in seqio.get_mixture_or_task(n).splits:
            problem = (f"{n} has no split {split!r}; it has "
                       f"{sorted(seqio.get_mixture_or_task(n).splits)}")
        if problem:
            if not is_mixture:
                raise InferenceConfigError(problem)
            log.info("skipping %s: %s", n, problem)
            continue
        out.append((info, task_mode))
    if not out:
        raise InferenceConfigError(f"no task of mixture {name!r} supports mode {mode!r} on "
                                   f"split {split!r}")
    return out


def validate_options(opts: InferenceOptions) -> None:
    if opts.mode not in predictions.MODES:
        raise InferenceConfigError(f"MODE {opts.mode!r} is not one of {list(predictions.MODES)}")
    for key in ("inputs", "targets"):
        if key not in opts.task_feature_lengths:
            raise InferenceConfigError(f"TASK_FEATURE_LENGTHS has no length for {key!r}")
    if opts.ranker not in RANKERS:
        raise InferenceConfigError(f"RANKER {opts.ranker!r} is not one of {list(RANKERS)}")
    for name in ("batch_size", "num_beams", "chunk_size", "candidate_block"):
        if int(getattr(opts, name)) < 1:
            raise InferenceConfigError(f"{name} must be >= 1, got {getattr(opts, name)}")
    if not opts.output_dir:
        raise InferenceConfigError("INFER_OUTPUT_DIR is required")


@outputs.releases_locks
def run_inference(checkpoint_path: str, task_name: str, opts: InferenceOptions,
                  data_dirs: Sequence[str] = (), dtype: str | None = None,
                  provenance: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Restore the checkpoint and infer every (sub-)task; returns one summary per task.

    Settings are checked (mode, task, split, checkpoint path, INFER_OUTPUT_DIR ownership)
    before the checkpoint is read or anything compiled. The checkpoint is resolved once
    (a MODEL_DIR → the step its best_checkpoint.json names, else its latest complete one) and
    identified by step and params sha256, which every chunk manifest and shard record carries.
    `data_dirs`: prepared dirs to register first where no registered task reads them yet
    (the job's DATA_DIR).
    """
    import jax

    from flanrec.data.prepared_tasks import ensure_registered  # TF: loads after the front end

    validate_options(opts)
    for data_dir in data_dirs:
        ensure_registered(data_dir)
    runs = resolve_runs(task_name, opts.split, opts.mode)
    if not storage.exists(checkpoint_path):
        raise InferenceConfigError(f"CHECKPOINT_PATH {checkpoint_path}: no such file or "
                                   "directory")
    out = outputs.claim_dir(opts.output_dir, "infer", what="INFER_OUTPUT_DIR",
                            lock=jax.process_index() == 0)  # process 0 locks for all
    opts = dataclasses.replace(opts, output_dir=out)
    ref, config, params = load_checkpoint(checkpoint_path)
    checkpoint = CheckpointIdentity(ref.path, ref.resolved, ref.step, params_sha256(params))
    log.info("checkpoint %s (step %s, params sha256 %s)", checkpoint.resolved,
             checkpoint.step, checkpoint.params_sha256[:12])
    if dtype:
        config = config.replace(dtype=dtype)
    params = jax.tree.map(jax.numpy.asarray, params)
    summaries = []
    for info, mode in runs:
        summary = run_task(info, config, params, checkpoint,
                           dataclasses.replace(opts, mode=mode), provenance)
        summary["task"] = info.name
        summary["mode"] = mode
        summaries.append(summary)
    return summaries
