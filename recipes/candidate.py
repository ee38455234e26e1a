"""One search candidate (prune from the shared scores, short distillation from the shared teacher cache), run on
the compute node (torchrun when distill.nproc_per_node > 1):
python recipes/candidate.py config=<run_dir>/config.yaml candidate=<name>"""

import sys

from compactlm.pipeline import main

if __name__ == "__main__":
    sys.exit(main("candidate"))
