"""Process set-up shared by the compute jobs, done before JAX is imported: a caching malloc.

Why: XLA:CPU allocates each step's temporary buffers afresh; glibc's malloc hands those
large blocks back to the kernel when they are freed and the next step faults the pages in
again. On the 2+2-layer recommendation model that page-fault traffic is a third of the train
step (a 1.5x faster step with tcmalloc, measured with bench/train_throughput.py; the same
allocator speeds up PyTorch too, so the benchmark runs both sides under one allocator).
tcmalloc keeps freed memory for reuse. It must be loaded before anything allocates, so a job
started without it re-executes itself once with `LD_PRELOAD` set, when the library is
installed (Debian/Ubuntu: `apt-get install libtcmalloc-minimal4`). `FLANREC_TCMALLOC=0`
turns this off; nothing changes numerically either way.
"""

from __future__ import annotations

import os
import sys

ENV = "FLANREC_TCMALLOC"
CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
    "/usr/lib/x86_64-linux-gnu/libtcmalloc.so.4",
    "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4",
    "/usr/lib64/libtcmalloc_minimal.so.4",
    "/usr/lib/libtcmalloc_minimal.so.4",
)


def tcmalloc_path() -> str | None:
    """The first installed tcmalloc library, or None."""
    return next((p for p in CANDIDATES if os.path.exists(p)), None)


def allocator() -> str:
    """"tcmalloc" when this process runs with it preloaded, else "system"."""
    return "tcmalloc" if "tcmalloc" in os.environ.get("LD_PRELOAD", "") else "system"


def reexec_with_tcmalloc() -> None:
    """Replace this process by the same command under tcmalloc, once, when it is available.

    No-op when already preloaded, when FLANREC_TCMALLOC=0, off Linux, when the library is
    missing, or when the command line cannot be reproduced (an interactive interpreter).
    """
    if os.environ.get(ENV, "1") in ("0", "loaded") or allocator() == "tcmalloc":
        return
    if not sys.platform.startswith("linux") or not getattr(sys, "orig_argv", None):
        return
    lib = tcmalloc_path()
    if lib is None:
        return
    env = dict(os.environ)
    env["LD_PRELOAD"] = " ".join(p for p in (lib, env.get("LD_PRELOAD", "")) if p)
    env[ENV] = "loaded"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
