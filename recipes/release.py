"""The release stage, run on the compute node: python recipes/release.py config=<run_dir>/config.yaml"""

import sys

from compactlm.pipeline import main

if __name__ == "__main__":
    sys.exit(main("release"))
