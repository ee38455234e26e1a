"""Test helper, not a compactlm command: runs `compactlm.distill.train.distill()` in a process of its own, for the
tests that kill that process or start it under torchrun. Users run distillation through `launch.py`.

    python tests/distill/distill_worker.py '<json: teacher, student, data, out, seed, distill, engine, cache_dtype>'
"""

import json
import sys

from compactlm.config import EngineConfig
from compactlm.distill.schema import DistillConfig
from compactlm.distill.train import distill

if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    distill(
        spec["teacher"],
        spec["student"],
        spec["data"],
        spec["out"],
        DistillConfig(**spec["distill"]),
        EngineConfig(**spec["engine"]),
        spec["seed"],
        progress=False,
        cache_dtype=spec["cache_dtype"],
    )
