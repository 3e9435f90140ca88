"""Start an RQ worker on the exports queue with the portal's settings (see exporter/worker.py)."""

import sys

from exporter.worker import main

if __name__ == "__main__":
    sys.exit(main())
