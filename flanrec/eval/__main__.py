"""`python -m flanrec.eval`: the command line (`flanrec.eval.cli`)."""

import sys

from flanrec.eval.cli import main

if __name__ == "__main__":
    sys.exit(main())
