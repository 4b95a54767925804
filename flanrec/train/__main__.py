"""`python -m flanrec.train`: the command line (`flanrec.train.cli`)."""

import sys

if __name__ == "__main__":  # before JAX is imported: a caching malloc (flanrec.frontend.runtime)
    from flanrec.frontend import runtime

    runtime.reexec_with_tcmalloc()

from flanrec.train.cli import main  # noqa: E402 - after the allocator re-exec

if __name__ == "__main__":
    sys.exit(main())
