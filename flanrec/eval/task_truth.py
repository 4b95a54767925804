"""Targets and metric fns from the task itself, for predictions the split's held-out item
cannot score.

The protocol's queries ask for each user's held-out item, and `flanrec.eval.truth` takes
that item from the prepared split. Two kinds of predictions need the task instead:

* `decode` records (free text, T5X's predict): scored as T5X's infer-eval scores them, the
  task's `postprocess_fn` applied to each target text and each prediction, then each of the
  task's predict `metric_fns(targets, predictions)`. Any registered seqio task works: a
  family with text targets (`tasks/next_genre.py`), a JSON-lines task, an item task decoded
  freely (its postprocessor maps the text to an item, its metric fn is HR@1).
* ranked item records of a family whose answer is another item than the held-out one
  (`Family.held_out_target` False): ranked against the `target_item` of the task's own
  example, with no seen items masked (the answer may be one of them).

Either way the targets come from the task's examples, read again through seqio in split
order (the position every record carries as `index`), never from the predictions file: a
record whose own target text, target item or user disagrees is refused, as is an index the
split does not have, and a file that covers part of the split unless partial files are
allowed. The task is looked up in seqio's registry, after importing the modules named on the
command line (`--task_module`) and the one `flanrec.infer` recorded in the shard's manifest
(MIXTURE_OR_TASK_MODULE). TensorFlow and seqio load only when such predictions are present,
so scoring ranking files stays light.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from flanrec.errors import UserError
from flanrec.eval.truth import Coverage, TruthError
from flanrec.files import predictions

_SHOWN = 3


class TaskLookupError(UserError, ValueError):
    """The task a predictions file names cannot be found or read (one line naming it)."""


def import_modules(modules: Sequence[str]) -> None:
    """Import each module that registers tasks (T5X's MIXTURE_OR_TASK_MODULE)."""
    for name in modules:
        if not name:
            continue
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise TaskLookupError(f"--task_module {name}: cannot import it ({e})") from None


def manifest_facts(paths: Sequence[str]) -> dict[str, Any]:
    """What `flanrec.infer` recorded about the task in the first shard's manifest:
    `task_module` and `task_info` ({family, target_kind, held_out_target, prepared});
    {} for a file without a manifest (a baseline's, an ensemble's)."""
    doc = predictions.read_manifest(paths[0]) if paths else None
    if not doc:
        return {}
    out = {}
    if isinstance(doc.get("task_module"), str):
        out["task_module"] = doc["task_module"]
    if isinstance(doc.get("task_info"), dict):
        out["task_info"] = doc["task_info"]
    return out


def _plain(value: Any) -> Any:
    """A numpy feature as plain Python: bytes -> str, arrays -> lists, scalars -> numbers."""
    import numpy as np

    if isinstance(value, np.ndarray):
        value = value.tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


@dataclasses.dataclass
class TaskExamples:
    """One task split as seqio renders it: index -> the example's features (plain Python),
    and the task's postprocess_fn and predict metric fns."""

    task: str
    split: str
    examples: dict[int, dict[str, Any]]
    postprocess_fn: Callable[..., Any] | None
    metric_fns: list[Callable[..., Any]]

    @classmethod
    def load(cls, task_name: str, split: str) -> TaskExamples:
        """Read every example of `task_name`/`split` in split order (no shuffle, one epoch,
        untrimmed: the targets are the whole text the model was asked for)."""
        import seqio

        if task_name not in seqio.TaskRegistry.names():
            raise TaskLookupError(
                f"{task_name}: no seqio task of that name is registered; name the module that "
                "registers it with --task_module (gin: MIXTURE_OR_TASK_MODULE), e.g. "
                "--task_module tasks.next_genre")
        task = seqio.get_mixture_or_task(task_name)
        if split not in task.splits:
            raise TaskLookupError(f"{task_name} has no split {split!r}; it has "
                                  f"{sorted(task.splits)}")
        ds = task.get_dataset(None, split=split, shuffle=False, num_epochs=1,
                              use_cached=False, seed=None, trim_output_features=False)
        examples = {j: {k: _plain(v) for k, v in ex.items()}
                    for j, ex in enumerate(ds.as_numpy_iterator())}
        return cls(task_name, split, examples, task.postprocess_fn,
                   list(task.predict_metric_fns))

    def target_text(self, index: int) -> str:
        ex = self.examples[index]
        return str(ex.get("targets_pretokenized", ""))

    def postprocess(self, text: str, example: Mapping[str, Any], is_target: bool) -> Any:
        if self.postprocess_fn is None:
            return text
        return self.postprocess_fn(text, example=example, is_target=is_target)


def _same_text(a: str, b: str) -> bool:
    return " ".join(a.split()) == " ".join(b.split())


def check_records(records: Sequence[Any], task: str, mode: str, truth: TaskExamples,
                  allow_partial: bool = False, source: str = "",
                  item_targets: bool = False) -> Coverage:
    """Check one (task, mode)'s records against the task's own examples; put the task's
    targets in (`targets`; with `item_targets`, `target_item` too).

    Raises TruthError listing what disagrees: an index the split does not have, a record
    whose user, target text or target item is not its example's, a file covering part of
    the split (unless `allow_partial`). Returns the coverage."""
    what = f"{source or task}: {task}-{mode}"
    problems: list[str] = []
    seen: set[int] = set()
    for r in records:
        d, at = r.data, os.path.basename(r.where)
        index = int(d["index"])
        if index not in truth.examples:
            problems.append(f"{at}: index {index} is not an example of {task}/{truth.split} "
                            f"({len(truth.examples)} examples)")
            continue
        ex = truth.examples[index]
        own_user = str(ex.get("user", "") or "")
        if own_user and d.get("user") not in ("", own_user):
            problems.append(f"{at}: example {index} is user {own_user!r}'s, the record says "
                            f"{d.get('user')!r}")
            continue
        target = truth.target_text(index)
        given = d.get("targets")
        if isinstance(given, str) and given and not _same_text(given, target):
            problems.append(f"{at}: example {index} has targets {given[:40]!r}, but the "
                            f"task's example says {target[:40]!r}")
            continue
        d["targets"] = target
        if item_targets:
            item = str(ex.get("target_item", "") or "")
            if not item:
                problems.append(f"{at}: example {index} of {task} names no target_item")
                continue
            own = d.get("target_item")
            if own not in (None, "", item, [item]):
                problems.append(f"{at}: example {index} has target_item {own!r}, but the "
                                f"task's example says {item!r}")
                continue
            d["target_item"] = item
        seen.add(index)
    if problems:
        shown = "; ".join(problems[:_SHOWN])
        more = f"; … ({len(problems) - _SHOWN} more)" if len(problems) > _SHOWN else ""
        raise TruthError(f"{what}: {len(problems)} record(s) disagree with the task's own "
                         f"examples: {shown}{more}")
    expected = len(truth.examples)
    missing = [i for i in sorted(truth.examples) if i not in seen]
    coverage = Coverage(len(seen), expected,
                        [str(truth.examples[i].get("user") or f"#{i}") for i in missing[:_SHOWN]])
    if coverage.partial and not allow_partial:
        raise TruthError(f"{what}: covers {len(seen)} of the {expected} examples of the "
                         f"{truth.split} split (missing e.g. example {missing[0]}); metrics "
                         "over part of the examples are not comparable. Finish the inference "
                         "run, or pass --allow_partial")
    return coverage


def _scalar(value: Any) -> float | None:
    """A metric fn's value as a float: a number, or seqio's Scalar (its `.value`); other
    kinds (text, histograms) are not table cells and are left out."""
    value = getattr(value, "value", value)
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    try:
        import numpy as np

        arr = np.asarray(value)
        if arr.ndim == 0 and np.issubdtype(arr.dtype, np.number):
            return float(arr)
    except (TypeError, ValueError):
        return None
    return None


def task_metrics(records: Sequence[Any], truth: TaskExamples) -> dict[str, float]:
    """T5X's infer-eval over checked records: postprocess each target (with its example,
    `is_target=True`) and each prediction, then merge every predict metric fn's output.
    Adds `num_examples`, and `empty_predictions` (records that decoded nothing)."""
    targets, preds = [], []
    for r in records:
        ex = truth.examples[int(r.data["index"])]
        targets.append(truth.postprocess(truth.target_text(int(r.data["index"])), ex, True))
        preds.append(truth.postprocess(str(r.data["prediction"]), ex, False))
    out: dict[str, float] = {}
    for fn in truth.metric_fns:
        name = getattr(fn, "__name__", type(fn).__name__)
        try:
            values = fn(targets, preds)
        except Exception as e:  # a user's metric fn: say which one failed on what
            raise TaskLookupError(f"{truth.task}: metric fn {name} failed on "
                                  f"{len(preds)} predictions: {type(e).__name__}: {e}") from e
        for key, value in dict(values).items():
            v = _scalar(value)
            if v is not None:
                out[str(key)] = v
    out["num_examples"] = float(len(records))
    out["empty_predictions"] = float(sum(not str(r.data["prediction"]).strip()
                                         for r in records))
    return {k: v for k, v in out.items() if not (isinstance(v, float) and math.isinf(v))}
