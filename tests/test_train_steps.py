"""Loss, accumulation and `flanrec.train` in-process on one CPU device: it learns, it starts
from a Hugging Face checkpoint with transformers' own loss, and it fails early and clearly."""

from __future__ import annotations

import logging
import sys

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import train_fixtures as tfx

import flanrec.configurables  # noqa: F401 - the names the gin files bind
from flanrec import partitioning
from flanrec.errors import ConfigError
from flanrec.model.config import get_preset
from flanrec.train import cli as train_cli
from flanrec.train import job as train
from flanrec.train import losses, optimizers
from flanrec.train import monitor as train_monitor
from flanrec.train import steps as trainer


# ---------------------------------------------------------------------------------- losses
def _numpy_loss(logits, targets, smoothing, z):
    v = logits.shape[-1]
    log_z = np.log(np.exp(logits).sum(-1))
    logp = logits - log_z[..., None]
    soft = np.full(logits.shape, smoothing / (v - 1))
    np.put_along_axis(soft, targets[..., None], 1 - smoothing, axis=-1)
    entropy = -(soft * np.log(soft)).sum(-1) if smoothing else 0.0
    per_token = -(soft * logp).sum(-1) - entropy + z * log_z ** 2
    w = (targets != 0).astype(np.float64)
    return (per_token * w).sum(), w.sum()


@pytest.mark.parametrize("smoothing,z", [(0.0, 0.0), (0.0, 1e-4), (0.1, 1e-4)])
def test_cross_entropy_matches_numpy_reference(smoothing, z):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 11)) * 3
    targets = rng.integers(1, 11, size=(3, 5))
    targets[0, 3:] = 0
    sums = losses.cross_entropy_sums(jnp.asarray(logits, jnp.float32), jnp.asarray(targets),
                                     losses.target_weights(jnp.asarray(targets)),
                                     losses.LossConfig(z_loss=z, label_smoothing=smoothing))
    want, weight = _numpy_loss(logits, targets, smoothing, z)
    assert float(sums["weight"]) == weight == 13
    assert float(sums["loss"]) == pytest.approx(want, rel=1e-5)
    hits = (logits.argmax(-1) == targets) & (targets != 0)
    assert float(sums["correct"]) == hits.sum()


def test_token_ids_beyond_the_vocabulary_are_refused_by_name():
    batch = {"encoder_input_tokens": np.array([[5, 200, 1]]),
             "decoder_target_tokens": np.array([[3, 1, 0]])}
    with pytest.raises(ValueError, match=r"'encoder_input_tokens' contains token id 200.*"
                                         r"\[0, 128\)"):
        trainer.check_token_ids(batch, 128, "training batch 1")
    trainer.check_token_ids({"decoder_target_tokens": np.array([[127, 1]])}, 128, "ok")


# ---------------------------------------------------------------------------- accumulation
def test_two_microbatches_of_four_equal_one_batch_of_eight():
    cfg = get_preset("tiny", dropout_rate=0.0)
    from flanrec.model.network import Transformer

    model = Transformer(cfg)
    mesh = partitioning.make_mesh((1, 1), devices=jax.devices()[:1])
    rules = partitioning.logical_axis_rules()
    # Plain SGD (lr 1): parameter differences are gradient differences, not amplified by
    # an adaptive normaliser dividing tiny gradients by their own magnitude.
    sched = optimizers.constant_schedule(1.0)
    tx = optax.sgd(sched)
    sh = trainer.state_shardings(trainer.abstract_state(model, tx), cfg, mesh, rules)
    bsh = partitioning.batch_sharding(mesh, rules)
    rng = np.random.default_rng(1)
    tg = rng.integers(2, 128, (8, 7)).astype(np.int32)
    for i, n in enumerate([7, 2, 5, 1, 6, 3, 7, 4]):  # uneven target lengths
        tg[i, n:] = 0
    batch = {"encoder_input_tokens": rng.integers(2, 128, (8, 10)).astype(np.int32),
             "decoder_target_tokens": tg,
             "decoder_input_tokens": np.concatenate([np.zeros((8, 1), np.int32), tg[:, :-1]], 1)}
    results = []
    for micro in (1, 2):
        state = trainer.init_state(model, tx, jax.random.PRNGKey(0), sh, mesh, rules)
        step = trainer.make_train_step(model, tx, sched, losses.LossConfig(), sh, bsh, mesh,
                                       rules, num_microbatches=micro)
        state, m = step(state, partitioning.host_to_global(batch, bsh), jax.random.PRNGKey(1))
        results.append((jax.device_get(state.params), jax.device_get(m)))
    (p1, m1), (p2, m2) = results
    for k in ("loss", "accuracy", "grad_norm", "target_tokens"):
        assert float(m2[k]) == pytest.approx(float(m1[k]), rel=1e-6, abs=1e-6), k
    for a, b in zip(jax.tree_util.tree_leaves(p1), jax.tree_util.tree_leaves(p2), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------- the job, in-process
@pytest.fixture(scope="module")
def task(tmp_path_factory):
    t = tfx.make_task(tmp_path_factory.mktemp("steps") / "task", n_train=16, n_val=8)
    sys.path.insert(0, t["dir"])
    yield t
    sys.path.remove(t["dir"])


def _main(args: list[str]) -> int:
    """The job's body (`train.cli`): diagnosed problems raise instead of becoming exit code 2
    (tests/test_jobs_cli.py checks that conversion)."""
    try:
        return train_cli.cli(args)
    finally:
        gin.clear_config()


def test_memorises_sixteen_examples(task, tmp_path):
    model_dir = tmp_path / "run"
    args = tfx.train_args(task, model_dir, steps=60, batch=16, extra=(
        "--gin.DROPOUT_RATE=0.0", "--gin.LEARNING_RATE=0.02", "--gin.LOG_PERIOD=10",
        "--gin.EVAL_PERIOD=60", "--gin.CHECKPOINT_PERIOD=1000"))
    assert _main(args) == 0
    loss = tfx.read_scalars(model_dir / "train", "loss")
    acc = tfx.read_scalars(model_dir / "train", "accuracy")
    assert loss[60] < 0.25 * loss[10]
    assert acc[60] > 0.95, acc
    # T5X's names (flanrec.train.scalars) for what T5X logs too, plus flanrec's extras.
    from flanrec.train import scalars

    tags = {tag: tfx.read_scalars(model_dir / "train", tag) for tag in (
        *scalars.TRAIN_TAGS, "grad_norm", "param_norm", "mfu", "timing/eta_seconds",
        "timing/nonpadding_target_tokens_per_second", "timing/evaluate_seconds")}
    assert all(tags.values()), [t for t, v in tags.items() if not v]
    for old in ("examples_per_sec", "target_tokens_per_sec", "steps_per_sec", "eta_sec"):
        assert not tfx.read_scalars(model_dir / "train", old), old
    step = 60
    assert tags["cross_ent_loss"][step] == pytest.approx(loss[step] - tags["z_loss"][step],
                                                         rel=1e-5, abs=1e-6)
    # T5X counts every target position (batch 16 x 8 targets), padding included.
    assert tags["timing/target_tokens_per_second"][step] == pytest.approx(
        tags["timing/steps_per_second"][step] * 16 * 8, rel=1e-5)
    assert tags["timing/seqs_per_second"][step] == pytest.approx(
        tags["timing/steps_per_second"][step] * 16, rel=1e-5)
    assert 0 < tags["non_padding_fraction/loss_weights"][step] < 1
    for tag in scalars.VALIDATION_TAGS:
        assert tfx.read_scalars(model_dir / "validation", tag)[60] >= 0, tag
    assert tfx.read_scalars(model_dir / "validation", "loss")[60] > 0
    # Effective config: written atomically, re-parsable, and naming the run's values.
    config = (model_dir / "config.gin").read_text()
    assert f"MIXTURE_OR_TASK_NAME = '{task['task']}'" in config
    assert "TRAIN_STEPS = 60" in config
    assert [p.name for p in model_dir.iterdir() if p.name.startswith(".")] == [
        ".flanrec-output.json"]  # the ownership marker; no temp file left behind
    assert (model_dir / "checkpoint_60" / "commit_success.txt").exists()


def test_step0_loss_from_hf_checkpoint_equals_transformers(task, tmp_path):
    import torch
    from hf_fixtures import save_hf_t5

    hf_dir = save_hf_t5(tmp_path / "hf")  # tiny: the shapes of gin/models/tiny.gin
    model_dir = tmp_path / "run"
    args = tfx.train_args(task, model_dir, steps=1, batch=8, extra=(
        f"--gin.INITIAL_CHECKPOINT_PATH={hf_dir}", "--gin.DROPOUT_RATE=0.0",
        "--gin.LossConfig.z_loss=0.0", "--gin.LossConfig.label_smoothing=0.0"))
    assert _main(args) == 0
    ours = tfx.read_scalars(model_dir / "train", "loss")[1]

    import transformers

    cfg = train.DatasetConfig(task["task"], {"inputs": 40, "targets": 8}, "train", 8,
                              shuffle=True, seed=0, pack=False)
    batch = next(train.train_batches(cfg, 8, 0))
    model = transformers.T5ForConditionalGeneration.from_pretrained(str(hf_dir)).eval()
    labels = torch.tensor(batch["decoder_target_tokens"], dtype=torch.long)
    enc = torch.tensor(batch["encoder_input_tokens"], dtype=torch.long)
    with torch.no_grad():
        out = model(input_ids=enc, attention_mask=(enc > 0).long(),
                    labels=torch.where(labels == 0, -100, labels))
    assert abs(ours - float(out.loss)) < 1e-4, (ours, float(out.loss))


def test_initial_checkpoint_of_another_shape_is_refused_before_training(task, tmp_path):
    from hf_fixtures import save_hf_t5

    hf_dir = save_hf_t5(tmp_path / "hf", d_ff=48)
    args = tfx.train_args(task, tmp_path / "run", steps=1,
                          extra=(f"--gin.INITIAL_CHECKPOINT_PATH={hf_dir}",))
    with pytest.raises(ValueError, match=r"wi_0/kernel has shape \(32, 48\), expected \(32, 64\)"):
        _main(args)


def test_non_finite_loss_or_params_stop_naming_the_step():
    # The guard every step's metrics pass through before any checkpoint of that step.
    window = train_monitor.Window()
    ok = {"loss": 2.0, "grad_norm": 1.0, "param_norm": 3.0, "accuracy": 0.5,
          "learning_rate": 1e-3, "target_tokens": 10.0, "z_loss": 0.0}
    assert window.add(3, ok) == 10.0
    with pytest.raises(train_monitor.NonFiniteLossError, match="at step 4: loss nan"):
        window.add(4, {**ok, "loss": float("nan")})
    # A finite loss (computed before the update) with weights blown up by the update.
    with pytest.raises(train_monitor.NonFiniteLossError,
                       match="at step 5: .*norm after the update inf"):
        window.add(5, {**ok, "param_norm": float("inf")})
    assert window.pop()["loss"] == 2.0


def test_misspelled_bindings_fail_at_parse_time(task, tmp_path):
    base = tfx.train_args(task, tmp_path / "run", steps=1)
    with pytest.raises(ValueError, match="doesn't have a parameter named 'lerning_rate'"):
        _main([*base, "--gin.make_optimizer.lerning_rate=0.1"])
    with pytest.raises(ValueError, match="No configurable matching 'trian'"):
        _main([*base, "--gin.trian.log_period=3"])
    with pytest.raises(ValueError, match="macro TRAIN_STEP is set on the command line"):
        _main([*base, "--gin.TRAIN_STEP=3"])
    assert not (tmp_path / "run").exists()  # nothing ran


def test_unwritable_model_dir_and_vocab_mismatch_fail_before_compiling(task, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(PermissionError, match="MODEL_DIR .* is not writable"):
        _main(tfx.train_args(task, blocker / "run", steps=1))
    with pytest.raises(ValueError, match="feature 'inputs' uses a vocabulary of \\d+ ids, but "
                                         "the model embeds only 16"):
        _main(tfx.train_args(task, tmp_path / "run", steps=1,
                             extra=("--gin.T5Config.vocab_size=16",)))
    with pytest.raises(ValueError, match="is not registered"):
        _main(tfx.train_args(task, tmp_path / "run2", steps=1,
                             extra=("--gin.MIXTURE_OR_TASK_NAME=no_such_task",)))


_REQUIRED = ["MODEL_DIR = '/tmp/unused'", "MIXTURE_OR_TASK_NAME = 't'", "TRAIN_STEPS = 1",
             "TASK_FEATURE_LENGTHS = {'inputs': 8, 'targets': 4}",
             "INITIAL_CHECKPOINT_PATH = None"]


@pytest.mark.parametrize("model", ["tiny", "flan_t5_small", "flan_t5_base", "flan_t5_large",
                                   "flan_t5_xl", "flan_t5_xxl"])
def test_model_gins_bind_exactly_the_presets(model):
    from flanrec.model.config import PRESETS

    for part in ("data_parallel", "model_parallel", "fsdp"):
        train_cli.configure_gin([f"gin/models/{model}.gin", "gin/runs/finetune.gin",
                             f"gin/partitioning/{part}.gin"],
                            [*_REQUIRED, "DROPOUT_RATE = 0.0", "ACTIVATION_DTYPE = 'float32'"])
        cfg = gin.query_parameter("%MODEL_CONFIG").scoped_configurable_fn()
        assert cfg == PRESETS[model.replace("_", "-")].replace(dropout_rate=0.0), part
    gin.clear_config()


def test_required_macros_and_the_quickstart_gin():
    with pytest.raises(ValueError, match="MODEL_DIR.*gin.REQUIRED"):
        train_cli.configure_gin(["gin/models/tiny.gin", "gin/runs/finetune.gin"], _REQUIRED[1:])
    train_cli.configure_gin(["gin/experiments/ml100k_tiny_cpu.gin"], ["MODEL_DIR = '/tmp/x'"])
    assert gin.query_parameter("%MIXTURE_OR_TASK_MODULE") == "tasks.movielens"
    gin.clear_config()


def _validation_tokens(caplog) -> list[int]:
    return [int(r.getMessage().rsplit("|", 1)[1].split()[0]) for r in caplog.records
            if r.getMessage().startswith("validation @ step")]


def test_eval_steps_caps_the_loss_validation_at_its_first_batches(task, tmp_path, caplog):
    """T5X's train.eval_steps: the teacher-forced validation reads only that many batches
    (the same ones each time); None reads the whole split; 0 is refused by name."""
    base = ("--gin.EVAL_PERIOD=2", "--gin.EVAL_BATCH_SIZE=2", "--gin.CHECKPOINT_PERIOD=1000")
    counts = {}
    for steps in (None, 1, 3):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="flanrec.train"):
            assert _main(tfx.train_args(task, tmp_path / f"run{steps}", steps=4, extra=(
                *base, f"--gin.train.eval_steps={steps}"))) == 0
        counts[steps] = _validation_tokens(caplog)
        assert len(counts[steps]) == 2 and counts[steps][0] == counts[steps][1]
    # 8 validation examples in 4 batches of 2: one batch < three batches < all four
    assert 0 < counts[1][0] < counts[3][0] < counts[None][0]
    with pytest.raises(ConfigError, match=r"train\.eval_steps must be a positive number"):
        _main(tfx.train_args(task, tmp_path / "bad", steps=1,
                             extra=(*base, "--gin.train.eval_steps=0")))
