"""compactlm launcher: compose the Hydra config, validate it, and run or submit the recipe's stages.

    python launch.py                                   # demo: SmolLM2-135M on CPU
    python launch.py recipe=params model=bielik_11b_v3  # parameter table of the EXP presets
    python launch.py recipe=prune_distill model=bielik_11b_v3 prune=exp_010 cluster=dgx_h200
    python launch.py dryrun=true ...                   # print what would run, submit nothing
"""

import hydra

from compactlm.conf_store import register_configs
from compactlm.launcher import launch

register_configs()


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg) -> None:
    raise SystemExit(launch(cfg))


if __name__ == "__main__":
    main()
