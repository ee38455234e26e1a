"""The deploy stage, run on a GPU node inside NVIDIA's TensorRT-LLM container (cluster.deploy_image):
python recipes/deploy.py config=<run_dir>/config.yaml"""

import sys

from compactlm.pipeline import main

if __name__ == "__main__":
    sys.exit(main("deploy"))
