"""``python -m s3torch <verb>``: the command line (s3torch.cli)."""

import sys

from .cli import main

sys.exit(main())
