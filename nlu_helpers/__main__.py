"""``python -m nlu_helpers <command>`` (and ``accelerate launch -m nlu_helpers <command>``): see :mod:`nlu_helpers.cli`."""

import sys

from nlu_helpers.cli import main

if __name__ == "__main__":
    sys.exit(main())
