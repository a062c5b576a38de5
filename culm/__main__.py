"""``python -m culm``: the ``culm`` command line."""

import sys

from culm.cli import main

sys.exit(main())
