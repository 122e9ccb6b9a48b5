"""`python -m distgan` runs the same CLI as the `distgan` console script."""

import sys

from distgan.cli import main

if __name__ == "__main__":
    sys.exit(main())
