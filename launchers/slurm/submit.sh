#!/bin/bash
# Submit every stage of a prepared run as Slurm jobs chained with afterok, without launch.py/NeMo-Run:
#   python launch.py recipe=prune_distill runs_root=/lustre/$USER/runs prepare_only=true
#   launchers/slurm/submit.sh /lustre/$USER/runs/<run>/config.yaml --account=<acct> [--partition=<p>] [more sbatch flags]
# Resources per stage: distill on NODES nodes x GPUS_PER_NODE GPUs (torchrun), model and data without GPUs,
# every other stage on one GPU. Environment: NODES (default 1), GPUS_PER_NODE (default 0 = CPU),
# TIME (default 04:00:00), plus what launchers/slurm/stage.sbatch reads (COMPACTLM_IMAGE, ...).
set -euo pipefail
if [ $# -lt 1 ] || [ ! -f "$1" ]; then
    echo "usage: launchers/slurm/submit.sh <run_dir>/config.yaml [sbatch flags, e.g. --account=<acct>]" >&2
    exit 2
fi
CONFIG=$(readlink -f "$1"); shift
HERE=$(cd "$(dirname "$0")" && pwd)
HOME_DIR=${COMPACTLM_HOME:-$(cd "$HERE/../.." && pwd)}
export COMPACTLM_HOME=$HOME_DIR
NODES=${NODES:-1}; GPUS=${GPUS_PER_NODE:-0}; TIME=${TIME:-04:00:00}
STAGES=$(PYTHONPATH="$HOME_DIR/src" python -c "import sys; from compactlm.pipeline import load_config; print(' '.join(load_config(sys.argv[1]).recipe.stages))" "$CONFIG")
LOGS=$(dirname "$CONFIG")/slurm_logs
mkdir -p "$LOGS"
prev=""
for stage in $STAGES; do
    res=(--nodes=1)
    case $stage in
        model|data) ;;
        distill) res=(--nodes="$NODES"); [ "$GPUS" -gt 0 ] && res+=(--gpus-per-node="$GPUS") ;;
        *) [ "$GPUS" -gt 0 ] && res+=(--gpus-per-node=1) ;;
    esac
    # a stage that failed for good cancels the ones after it instead of leaving them pending forever
    dep=(); [ -n "$prev" ] && dep=(--dependency=afterok:"$prev" --kill-on-invalid-dep=yes)
    prev=$(sbatch --parsable --job-name="compactlm-$stage" --time="$TIME" --output="$LOGS/$stage-%j.out" \
        "${res[@]}" "${dep[@]}" "$@" "$HERE/stage.sbatch" "$stage" "$CONFIG")
    echo "$stage: job $prev"
done
echo "logs: $LOGS   status: sacct -j <job> or squeue -u ${USER:-$(id -un)}"
