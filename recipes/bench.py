"""The bench stage (teacher vs student inference speed), run on the compute node:
python recipes/bench.py config=<run_dir>/config.yaml"""

import sys

from compactlm.pipeline import main

if __name__ == "__main__":
    sys.exit(main("bench"))
