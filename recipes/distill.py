"""The distill stage, run on the compute node (torchrun when distill.nproc_per_node > 1):
python recipes/distill.py config=<run_dir>/config.yaml"""

import sys

from compactlm.pipeline import main

if __name__ == "__main__":
    sys.exit(main("distill"))
