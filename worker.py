"""Start an RQ worker on the exports queue with the portal's settings (exporter/jobs/worker.py)."""

import sys

from exporter.jobs.worker import main

if __name__ == "__main__":
    sys.exit(main())
