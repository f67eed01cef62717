"""``python -m model_opt.cli``: the `model-opt` command."""

import sys

from model_opt.cli.main import main

sys.exit(main())
