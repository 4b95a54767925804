"""`python -m flanrec.convert`: the command line (`flanrec.convert.cli`)."""

import sys

from flanrec.convert.cli import main

if __name__ == "__main__":
    sys.exit(main())
