#!/usr/bin/env python
"""The seed's entry point, kept as a thin wrapper of `sst-merge experiment`.

    python experiments/run_real_experiments.py --mode minimal --model mistral-7b --experiment all
"""

from __future__ import annotations

import sys

from sst_merge.cli import main

if __name__ == "__main__":
    sys.exit(main(["experiment", *sys.argv[1:]]))
