"""``python -m trainop.exporter``."""

import sys

from trainop.exporter.app import main

sys.exit(main())
