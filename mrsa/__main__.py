"""``python -m mrsa``: the ``mrsa`` command."""

import sys

from mrsa.cli import main

if __name__ == "__main__":
    sys.exit(main())
