"""``python -m treecomp.bench``: the bench's command line, and how the parent starts a worker."""

import sys

from treecomp.bench.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m treecomp.bench"))
