"""``python -m ppp_min.sweep``: see ppp_min.sweep.runner."""

import sys

from ppp_min.sweep.runner import main

sys.exit(main())
