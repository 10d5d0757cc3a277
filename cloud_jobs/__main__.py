"""``python -m cloud_jobs`` (what torchrun launches: ``torchrun ... -m cloud_jobs train``)."""

import sys

from cloud_jobs.cli import main

sys.exit(main())
