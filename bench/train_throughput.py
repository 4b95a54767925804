"""Training-step throughput, MFU and peak memory: flanrec vs transformers' PyTorch T5.

    python bench/train_throughput.py --preset flan-t5-small           # the goal shape
    python bench/train_throughput.py --preset tiny --repeats 20
    FLANREC_DATA_DIR=data/ml-100k python bench/train_throughput.py \
        --experiment gin/experiments/ml100k_seqrec.gin                # an experiment, exactly
    python bench/train_throughput.py --smoke                          # seconds; for the test

`--experiment FILE` runs the model shapes, batch size, feature lengths and dropout of a gin
experiment. When its task is registered (FLANREC_DATA_DIR), both sides train on the same
real batches of that task, so "target items/s" (item predictions that carry loss: target
tokens that are not padding and not EOS) is what the experiment trains; otherwise on random
tokens with every target position an item.

Each framework runs in its own worker subprocess (so peak RSS is separable), on identical
random weights (flanrec's export to an HF directory), the identical batch (16 x 128 input
tokens, 8 target tokens, no padding), the same loss (mean token cross-entropy, no z-loss)
and AdamW (lr 1e-4, no weight decay): flanrec's jitted, state-donating step from
`flanrec.train.steps.make_train_step` + `flanrec.train.optimizers.adamw` against
`T5ForConditionalGeneration` + `torch.optim.AdamW`. The parent drives the workers in
alternating rounds (A B, B A, ...) and reports medians and ratios; the first-step losses of
both sides are printed as a check that they compute the same thing.

MFU = analytic model FLOPs (`flanrec.train.flops.train_flops_per_step`) / step time / peak, the
peak being the best rate of a jitted 2048 x 2048 fp32 matmul measured between rounds on CPU;
on a GPU/TPU flanrec runs in bf16 and the peak is the device's published bf16 figure.
Memory: peak RSS growth during the timed steps over the worker's RSS after imports, against
`bench.memory.train_step_bytes` (params + grads + AdamW moments + activations).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import _common  # noqa: E402

PROTO = "@@BENCH "
LR = 1e-4


# =============================================================================== workers
def _reply(obj: dict[str, Any]) -> None:
    sys.stdout.write(PROTO + json.dumps(obj) + "\n")
    sys.stdout.flush()


def _batch_arrays(vocab: int, batch: int, enc_len: int, dec_len: int,
                  batch_file: str | None = None) -> list[dict[str, Any]]:
    """The timed batches: real ones saved by the parent (--experiment), else one random."""
    import numpy as np

    if batch_file:
        with np.load(batch_file) as z:
            n = int(z["num_batches"])
            return [{k: z[f"{k}_{i}"] for k in FEATURES} for i in range(n)]
    rng = np.random.default_rng(0)
    enc = rng.integers(2, vocab, (batch, enc_len)).astype(np.int32)
    tgt = rng.integers(2, vocab, (batch, dec_len)).astype(np.int32)
    dec_in = np.concatenate([np.zeros((batch, 1), np.int32), tgt[:, :-1]], axis=1)
    return [{"encoder_input_tokens": enc, "decoder_input_tokens": dec_in,
             "decoder_target_tokens": tgt}]


FEATURES = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens")


def _model_config(args: argparse.Namespace, **overrides: Any) -> Any:
    from flanrec.model import get_preset
    from flanrec.model.config import T5Config

    if args.config_json:
        return T5Config.from_dict({**json.loads(args.config_json), **overrides})
    return get_preset(args.preset, **overrides)


def _random_params(cfg: Any, seed: int = 0) -> dict:
    import numpy as np

    from flanrec.model.params import param_specs, unflatten

    rng = np.random.default_rng(seed)
    flat = {}
    for name, (shape, _) in param_specs(cfg).items():
        if name.endswith("/scale"):
            value = np.ones(shape)
        elif name.endswith("embedding"):
            value = rng.normal(0.0, 1.0, shape)
        else:
            value = rng.normal(0.0, 1.0 / np.sqrt(shape[0]), shape)
        flat[name] = value.astype(np.float32)
    return unflatten(flat)


def _serve(run_steps: Any, peak: Any, first_loss: float, info: dict[str, Any]) -> None:
    """Answer the parent's commands on stdin until 'quit'."""
    _reply({"ready": True, "first_loss": first_loss, **info})
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        if cmd[0] == "run":
            _reply({"times": run_steps(int(cmd[1]))})
        elif cmd[0] == "peak":
            _reply({"peak": peak()})
        elif cmd[0] == "mem":
            _reply({"peak_rss": _common.peak_rss_bytes(), "rss": _common.rss_bytes()})


def worker_flanrec(args: argparse.Namespace) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from flanrec import partitioning
    from flanrec.interop import hf
    from flanrec.model import Transformer
    from flanrec.train import flops, losses, optimizers
    from flanrec.train import steps as trainer

    jnp.zeros(()).block_until_ready()  # runtime up before the baseline
    base_rss = _common.rss_bytes()
    accel = jax.devices()[0].platform != "cpu"
    cfg = _model_config(args, dropout_rate=args.dropout,
                        dtype="bfloat16" if accel and not args.fp32 else "float32")
    params = _random_params(cfg)
    hf.export_hf(cfg.replace(dtype="float32", dropout_rate=0.0), params, args.export_dir)

    mesh = partitioning.make_mesh((-1, 1), ("data", "model"))
    rules = partitioning.logical_axis_rules()
    model = Transformer(cfg)
    schedule = optimizers.constant_schedule(LR)
    tx = optimizers.adamw(schedule)
    abstract = trainer.abstract_state(model, tx)
    shardings = trainer.state_shardings(abstract, cfg, mesh, rules)
    state = trainer.init_state(model, tx, jax.random.PRNGKey(0), shardings, mesh, rules, params)
    del params
    bsh = partitioning.batch_sharding(mesh, rules)
    loss_cfg = losses.LossConfig(z_loss=0.0)
    step = trainer.make_train_step(model, tx, schedule, loss_cfg, shardings, bsh, mesh, rules)
    hosts = _batch_arrays(cfg.vocab_size, args.batch, args.enc_len, args.dec_len,
                          args.batch_file)
    rng = jax.random.PRNGKey(1)
    box = {"state": state, "i": 0}
    # The parity check: a deterministic (no dropout) loss of the first batch, before any
    # update, on both sides.
    eval_step = trainer.make_eval_step(model, loss_cfg, shardings.params, bsh, mesh, rules)
    sums = eval_step(state.params, partitioning.host_to_global(hosts[0], bsh))
    first_loss = float(sums["loss"]) / max(float(sums["weight"]), 1.0)

    def one() -> float:
        host = hosts[box["i"] % len(hosts)]
        box["i"] += 1
        box["state"], metrics = step(box["state"], partitioning.host_to_global(host, bsh), rng)
        return float(metrics["loss"])  # blocks until the step is done

    one()
    one()  # a second warm-up: allocations reach steady state
    _common.reset_peak_rss()
    steady_rss = _common.rss_bytes()

    def run_steps(n: int) -> list[float]:
        return _common.time_calls(one, n)

    def peak() -> float:
        if accel:
            return flops.peak_flops_total()[0]
        return flops.measure_matmul_flops(n=2048, seconds=args.peak_seconds)

    source = flops.peak_flops_total()[1] if accel else "measured 2048x2048 fp32 jit matmul"
    _serve(run_steps, peak, first_loss,
           {"base_rss": base_rss, "steady_rss": steady_rss, "dtype": cfg.dtype,
            "device": jax.devices()[0].device_kind,
            "peak_source": source, "jax": jax.__version__, "n_devices": jax.device_count(),
            "params": int(sum(np.prod(x.shape) for x in jax.tree.leaves(box["state"].params)))})


def worker_torch(args: argparse.Namespace) -> None:
    import torch
    import transformers

    torch.zeros(1)
    base_rss = _common.rss_bytes()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = transformers.T5ForConditionalGeneration.from_pretrained(
        args.export_dir, dropout_rate=args.dropout).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    cfg = _model_config(args)
    hosts = _batch_arrays(cfg.vocab_size, args.batch, args.enc_len, args.dec_len,
                          args.batch_file)
    batches = []
    for host in hosts:
        enc, dec_in, tgt = (torch.from_numpy(host[k]).long().to(device) for k in FEATURES)
        # flanrec masks padding (0) targets; transformers ignores label -100.
        batches.append((enc, dec_in, torch.where(tgt == 0, -100, tgt)))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    box = {"i": 0}
    model.eval()
    with torch.no_grad():
        enc, dec_in, tgt = batches[0]
        first_loss = float(model(input_ids=enc, attention_mask=(enc > 0).long(),
                                 decoder_input_ids=dec_in, labels=tgt).loss)
    model.train()  # dropout as in the experiment (0 for the presets)

    def one() -> float:
        enc, dec_in, tgt = batches[box["i"] % len(batches)]
        box["i"] += 1
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            loss = model(input_ids=enc, attention_mask=(enc > 0).long(),
                         decoder_input_ids=dec_in, labels=tgt).loss
        loss.backward()
        opt.step()
        sync()
        return float(loss)

    one()
    one()
    _common.reset_peak_rss()
    steady_rss = _common.rss_bytes()

    def run_steps(n: int) -> list[float]:
        return _common.time_calls(one, n)

    def peak() -> float:
        a = torch.ones(2048, 2048, device=device)
        (a @ a).sum().item()
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < args.peak_seconds or count < 3:
            (a @ a)
            sync()
            count += 1
        return 2.0 * 2048 ** 3 * count / (time.perf_counter() - start)

    _serve(run_steps, peak, first_loss,
           {"base_rss": base_rss, "steady_rss": steady_rss, "torch": torch.__version__,
            "device": device,
            "transformers": transformers.__version__, "threads": torch.get_num_threads()})


# ================================================================================ parent
class Worker:
    """A worker subprocess speaking the line protocol above."""

    def __init__(self, kind: str, args: argparse.Namespace, export_dir: str) -> None:
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind,
               "--preset", args.preset, "--batch", str(args.batch),
               "--enc_len", str(args.enc_len), "--dec_len", str(args.dec_len),
               "--export_dir", export_dir, "--peak_seconds", str(args.peak_seconds),
               "--torch_threads", str(args.torch_threads), "--dropout", str(args.dropout)]
        cmd += ["--fp32"] if args.fp32 else []
        cmd += ["--config_json", args.config_json] if args.config_json else []
        cmd += ["--batch_file", args.batch_file] if args.batch_file else []
        self.kind = kind
        self.log = tempfile.TemporaryFile(mode="w+")
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
        # One allocator for both sides (flanrec's jobs preload tcmalloc when installed, and
        # it speeds up PyTorch as much): see flanrec.frontend.runtime.
        preload = env.get("LD_PRELOAD", "")
        env["LD_PRELOAD"] = " ".join(p for p in (args.tcmalloc_path, preload) if p)
        if args.single_thread:  # one core each: per-core efficiency, robust to a busy machine
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
                                " intra_op_parallelism_threads=1").strip()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True, env=env)

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(PROTO):
                return json.loads(line[len(PROTO):])
        self.log.seek(0)
        raise RuntimeError(f"{self.kind} worker exited (rc={self.proc.wait()}):\n"
                           f"{self.log.read()[-4000:]}")

    def ask(self, cmd: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.ask("quit")
            except (RuntimeError, BrokenPipeError):
                pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="flan-t5-small")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--enc_len", type=int, default=128)
    ap.add_argument("--dec_len", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=4, help="alternating A/B rounds")
    ap.add_argument("--repeats", type=int, default=2, help="timed steps per side per round")
    ap.add_argument("--peak_seconds", type=float, default=1.0)
    ap.add_argument("--torch_threads", type=int, default=0, help="0: torch's default")
    ap.add_argument("--fp32", action="store_true", help="fp32 even on an accelerator")
    ap.add_argument("--single_thread", action="store_true",
                    help="one thread per framework (XLA eigen pool off, torch threads 1)")
    ap.add_argument("--experiment", default=None, metavar="GIN_FILE",
                    help="take model, batch, feature lengths and dropout from this gin "
                    "experiment (real batches of its task when it is registered)")
    ap.add_argument("--allocator", choices=("auto", "tcmalloc", "system"), default="auto",
                    help="malloc of both workers: tcmalloc (auto: when installed, as the "
                    "flanrec jobs do) or glibc's")
    ap.add_argument("--real_batches", type=int, default=8,
                    help="with --experiment: distinct real batches cycled through")
    ap.add_argument("--dropout", type=float, default=0.0, help=argparse.SUPPRESS)
    ap.add_argument("--config_json", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--batch_file", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, 1 round: seconds")
    ap.add_argument("--no_record", action="store_true", help="do not append to the results")
    ap.add_argument("--worker", choices=["flanrec", "torch"], help=argparse.SUPPRESS)
    ap.add_argument("--export_dir", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    from flanrec.frontend import runtime

    args.tcmalloc_path = None if args.allocator == "system" else runtime.tcmalloc_path()
    if args.allocator == "tcmalloc" and args.tcmalloc_path is None:
        ap.error("--allocator tcmalloc: not installed (apt-get install libtcmalloc-minimal4)")
    if args.worker:
        (worker_flanrec if args.worker == "flanrec" else worker_torch)(args)
        return {}
    if args.single_thread:
        args.torch_threads = 1
    if args.smoke:
        args.preset, args.batch, args.enc_len, args.dec_len = "tiny", 2, 16, 4
        args.rounds, args.repeats, args.peak_seconds = 1, 1, 0.05

    from bench.memory import train_step_bytes
    from flanrec.train import flops
    from flanrec.train import steps as trainer

    with tempfile.TemporaryDirectory(prefix="flanrec-bench-") as tmp:
        data_source = "random tokens"
        if args.experiment:
            data_source = _from_experiment(args, tmp)
        cfg = _model_config(args, dropout_rate=0.0)
        items_per_step = _items_per_step(args)
        export = os.path.join(tmp, "hf")
        ours = Worker("flanrec", args, export)
        theirs = None
        try:
            info_ours = ours.read()  # exports the weights before torch loads them
            theirs = Worker("torch", args, export)
            info_theirs = theirs.read()
            peaks: dict[str, list[float]] = {"flanrec": [], "torch": []}

            def side(w: Worker) -> Any:
                def run(n: int) -> list[float]:
                    peaks[w.kind].append(w.ask("peak")["peak"])
                    return w.ask(f"run {n}")["times"]
                return run

            times = _common.alternate({"flanrec": side(ours), "torch": side(theirs)},
                                      args.rounds, args.repeats)
            mem = {"flanrec": ours.ask("mem"), "torch": theirs.ask("mem")}
        finally:
            ours.close()
            if theirs is not None:
                theirs.close()

    step_flops = flops.train_flops_per_step(cfg, args.batch, args.enc_len, args.dec_len)
    if items_per_step is None:
        items_per_step = float(args.batch * args.dec_len)
    peak = max(peaks["flanrec"])
    # A measured CPU peak is a floor, not a ceiling (the probe may have run while the
    # machine was busier than during a step): never let a step beat it, so MFU <= 100%.
    fastest = max(step_flops / min(times[k]) for k in ("flanrec", "torch"))
    if info_ours["peak_source"].startswith("measured") and fastest > peak:
        print(f"a train step ran at {fastest / 1e9:.1f} GFLOP/s, above the measured matmul "
              f"peak {peak / 1e9:.1f}: MFU is taken against the former", flush=True)
        peak = fastest
    estimate = train_step_bytes(cfg, args.batch, args.enc_len, args.dec_len)
    rows, sides = [], {}
    for name, info in (("flanrec", info_ours), ("transformers", info_theirs)):
        key = "flanrec" if name == "flanrec" else "torch"
        t = _common.median(times[key])
        grown = mem[key]["peak_rss"] - info["base_rss"]
        sides[name] = {
            "step_s": t, "step_s_all": times[key], "examples_per_s": args.batch / t,
            "target_tokens_per_s": args.batch * args.dec_len / t,
            "target_items_per_s": items_per_step / t,
            "mfu": flops.utilisation(step_flops / t, peak), "first_loss": info["first_loss"],
            "peak_rss": mem[key]["peak_rss"], "base_rss": info["base_rss"],
            "steady_rss": info["steady_rss"],
            "rss_growth": grown, "mem_vs_estimate": grown / estimate["total"],
            "own_matmul_peak": max(peaks[key]),
        }
        s = sides[name]
        rows.append([name, s["step_s"] * 1e3, _common.spread(times[key]), s["examples_per_s"],
                     s["target_items_per_s"], trainer.format_mfu(s["mfu"]),
                     f"{s['peak_rss'] / 2**20:.0f}", f"{grown / 2**20:.0f}",
                     f"{s['mem_vs_estimate']:.2f}", f"{s['first_loss']:.5f}"])
    ratio = sides["transformers"]["step_s"] / sides["flanrec"]["step_s"]
    header = ["framework", "step ms (median)", "min-max ms", "examples/s", "target items/s",
              "MFU", "peak RSS MiB", "RSS growth MiB", "growth/estimate", "first loss"]
    title = (f"train step, {cfg.name}, batch {args.batch} x {args.enc_len} in / "
             f"{args.dec_len} out, {info_ours['dtype']}, dropout {args.dropout}, "
             f"{data_source}, {'tcmalloc' if args.tcmalloc_path else 'glibc malloc'}, "
             f"{args.rounds} rounds x {args.repeats} steps alternating, "
             f"load {os.getloadavg()[0]:.2f}")
    _common.print_table(title, header, rows)
    print(f"\ntarget items per step {items_per_step:.0f}: flanrec "
          f"{sides['flanrec']['target_items_per_s']:.0f} items/s, transformers "
          f"{sides['transformers']['target_items_per_s']:.0f} items/s", flush=True)
    print(f"flanrec / transformers target tokens/s: {ratio:.2f}x   "
          f"MFU flanrec {trainer.format_mfu(sides['flanrec']['mfu'])} of {peak / 1e9:.1f} GFLOP/s "
          f"({info_ours['peak_source']}; torch's own 2048 matmul: "
          f"{sides['transformers']['own_matmul_peak'] / 1e9:.1f} GFLOP/s)   "
          f"analytic memory estimate {estimate['total'] / 2**20:.0f} MiB "
          f"(params {estimate['params'] / 2**20:.0f}, grads {estimate['grads'] / 2**20:.0f}, "
          f"AdamW {estimate['optimizer'] / 2**20:.0f}, activations "
          f"{estimate['activations'] / 2**20:.0f})", flush=True)
    record = {"bench": "train_throughput", "preset": cfg.name, "batch": args.batch,
              "experiment": args.experiment, "data": data_source, "dropout": args.dropout,
              "allocator": "tcmalloc" if args.tcmalloc_path else "system",
              "target_items_per_step": items_per_step,
              "single_thread": args.single_thread,
              "enc_len": args.enc_len, "dec_len": args.dec_len, "dtype": info_ours["dtype"],
              "rounds": args.rounds, "repeats": args.repeats, "smoke": args.smoke,
              "flops_per_step": step_flops, "peak_flops": peak,
              "peak_source": info_ours["peak_source"], "ratio_tokens_per_s": ratio,
              "estimate_bytes": estimate, "sides": sides,
              "versions": {k: v for i in (info_ours, info_theirs) for k, v in i.items()
                           if k in ("jax", "torch", "transformers", "threads", "device")}}
    if not args.no_record:
        print(f"appended to {_common.append_result(record)}")
    return record


def _from_experiment(args: argparse.Namespace, tmp: str) -> str:
    """Set shapes from a gin experiment; save real batches of its task when registered.

    Returns what the batches are ("real batches of TASK" or "random tokens").
    """
    import importlib

    import numpy as np

    from flanrec.train import job as train_lib

    exp = _common.experiment_settings(args.experiment)
    cfg, task, lengths = exp["model"], exp["task"], exp["lengths"]
    args.batch = exp["batch"]
    args.enc_len, args.dec_len = int(lengths["inputs"]), int(lengths["targets"])
    args.dropout = float(cfg.dropout_rate)
    args.config_json = json.dumps(cfg.replace(dropout_rate=0.0).to_dict())
    try:
        import seqio

        importlib.import_module(exp["module"])
        seqio.get_mixture_or_task(task)
    except (ImportError, ValueError):
        return "random tokens (task not registered: set FLANREC_DATA_DIR)"
    stream = train_lib.train_batches(train_lib.DatasetConfig(
        mixture_or_task_name=task, task_feature_lengths=lengths, batch_size=args.batch,
        shuffle=True, seed=0, pack=exp["pack"]), args.batch, 0)
    arrays: dict[str, Any] = {"num_batches": np.int32(args.real_batches)}
    for i in range(args.real_batches):
        b = next(stream)
        for k in FEATURES:
            arrays[f"{k}_{i}"] = b[k].astype(np.int32)
    args.batch_file = os.path.join(tmp, "batches.npz")
    np.savez(args.batch_file, **arrays)
    return f"real batches of {task}"


def _items_per_step(args: argparse.Namespace) -> float | None:
    """Mean item predictions per step of the saved real batches: target tokens that are not
    padding (0) and not EOS (1); None for random batches (every position is an item)."""
    import numpy as np

    if not args.batch_file:
        return None
    with np.load(args.batch_file) as z:
        n = int(z["num_batches"])
        tgt = [z[f"decoder_target_tokens_{i}"] for i in range(n)]
    return float(np.mean([np.sum(t > 1) for t in tgt]))


if __name__ == "__main__":
    main()
