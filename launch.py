"""compactlm launcher: compose the Hydra config, validate it, and run or submit the recipe's stages.

    python launch.py                                   # demo: SmolLM2-135M on CPU
    python launch.py recipe=params model=bielik_11b_v3  # parameter table of the EXP presets
    python launch.py recipe=prune_distill model=bielik_11b_v3 prune=exp_010 cluster=dgx_h200
    python launch.py dryrun=true ...                   # print what would run, submit nothing
    python launch.py list | status | logs | cancel | report ...   # operate on runs (see `launch.py list --help`)
    python launch.py --help                            # every config group and key

A bad command line or config stops with one line, `compactlm: configuration error: ...`, and exit code 2.
"""

import sys
from pathlib import Path

from compactlm.launch.compose import main
from compactlm.launch.launcher import launch
from compactlm.launch.ops import COMMANDS
from compactlm.launch.ops import main as ops_main

if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in COMMANDS:
        raise SystemExit(ops_main(sys.argv[1:]))
    raise SystemExit(main(sys.argv[1:], launch, conf_dir=Path(__file__).resolve().parent / "conf"))
