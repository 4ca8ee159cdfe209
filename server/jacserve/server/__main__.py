"""``python -m jacserve.server [flags]`` is ``jacserve serve [flags]``."""

import sys

from jacserve.server.app import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
