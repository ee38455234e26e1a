"""`python -m compactlm <stage> config=<run_dir>/config.yaml [<stage>=<instance>]`: runs one stage of a run, for a
stage that has no script in recipes/ (one registered from outside compactlm: compactlm.stages)."""

import sys

from compactlm.config import ConfigError
from compactlm.pipeline import main
from compactlm.stages import get

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1].startswith("-") or "=" in sys.argv[1]:
        print("usage: python -m compactlm <stage> config=<run_dir>/config.yaml", file=sys.stderr)
        sys.exit(2)
    try:
        get(sys.argv[1])
    except ConfigError as e:
        print(f"python -m compactlm: {e}", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1], sys.argv[2:]))
