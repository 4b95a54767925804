"""`python -m flanrec.infer`: the command line (`flanrec.infer.cli`)."""

import sys

if __name__ == "__main__":  # before JAX is imported: a caching malloc (flanrec.frontend.runtime)
    from flanrec.frontend import runtime

    runtime.reexec_with_tcmalloc()

from flanrec.infer.cli import main  # noqa: E402 - after the allocator re-exec

if __name__ == "__main__":
    sys.exit(main())
