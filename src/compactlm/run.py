"""Every stage's entry point, run on the compute node by stage name (what launch.py submits, one per task):

    python -m compactlm.run <stage> config=<run_dir>/config.yaml
    python -m compactlm.run candidate config=<run_dir>/config.yaml candidate=<name>   # one search candidate
    torchrun --nproc-per-node 8 -m compactlm.run distill config=<run_dir>/config.yaml  # the training stages

`python -m compactlm.run --help` lists the stages. A module, not a script per stage: a script folder on sys.path
would shadow packages named like a stage (`gguf`)."""

import sys

from compactlm.pipeline import main

if __name__ == "__main__":
    sys.exit(main())
