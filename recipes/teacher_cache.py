"""The teacher_cache stage of a search (the teacher's top-k logits over the ranking tokens), run on the compute node:
python recipes/teacher_cache.py config=<run_dir>/config.yaml"""

import sys

from compactlm.pipeline import main

if __name__ == "__main__":
    sys.exit(main("teacher_cache"))
