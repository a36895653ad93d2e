"""``python -m retrievalguard_fast {demo,certify,attack,bench,info}``: see retrievalguard_fast.cli."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
