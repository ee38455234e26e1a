"""The ranking stage of a search (candidates by validation loss after their short distillation), run on the compute
node: python recipes/ranking.py config=<run_dir>/config.yaml"""

import sys

from compactlm.pipeline import main

if __name__ == "__main__":
    sys.exit(main("ranking"))
