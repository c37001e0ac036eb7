"""``python -m lightnets.bench DIR/request.json``: the bench worker (lightnets.bench.worker)."""

import sys

from .worker import main

sys.exit(main())
