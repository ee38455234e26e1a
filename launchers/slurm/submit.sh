#!/bin/bash
# Submit every stage of a prepared run as Slurm jobs chained with afterok, without launch.py/NeMo-Run:
#   python launch.py recipe=prune_distill runs_root=/lustre/$USER/runs prepare_only=true
#   launchers/slurm/submit.sh /lustre/$USER/runs/<run>/config.yaml --account=<acct> [--partition=<p>] [more sbatch flags]
# Resources per stage: distill on NODES nodes x GPUS_PER_NODE GPUs (torchrun), each search candidate on one node
# with GPUS_PER_NODE GPUs, model and data without GPUs, every other stage on one GPU. A stage's jobs (one per
# search candidate) depend on every job of the stage before, so candidates run side by side. Environment: NODES (default 1), GPUS_PER_NODE (default 0 = CPU),
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
# one line per stage: its tasks (the stage itself, or candidate-<name> for each search candidate)
STAGES=$(PYTHONPATH="$HOME_DIR/src" python -c "import sys; from compactlm.pipeline import load_config, stage_tasks; c = load_config(sys.argv[1]); print('\n'.join(' '.join(stage_tasks(c, s)) for s in c.recipe.stages))" "$CONFIG")
LOGS=$(dirname "$CONFIG")/slurm_logs
mkdir -p "$LOGS"
prev=""
while read -r tasks; do
    ids=()
    for task in $tasks; do
        res=(--nodes=1)
        case ${task%%-*} in
            model|data) ;;
            distill) res=(--nodes="$NODES"); [ "$GPUS" -gt 0 ] && res+=(--gpus-per-node="$GPUS") ;;
            candidate) [ "$GPUS" -gt 0 ] && res+=(--gpus-per-node="$GPUS") ;;
            *) [ "$GPUS" -gt 0 ] && res+=(--gpus-per-node=1) ;;
        esac
        # a stage that failed for good cancels the ones after it instead of leaving them pending forever
        dep=(); [ -n "$prev" ] && dep=(--dependency=afterok:"$prev" --kill-on-invalid-dep=yes)
        id=$(sbatch --parsable --job-name="compactlm-$task" --time="$TIME" --output="$LOGS/$task-%j.out" \
            "${res[@]}" "${dep[@]}" "$@" "$HERE/stage.sbatch" "$task" "$CONFIG")
        echo "$task: job $id"
        ids+=("$id")
    done
    prev=$(IFS=:; echo "${ids[*]}")
done <<< "$STAGES"
echo "logs: $LOGS   status: sacct -j <job> or squeue -u ${USER:-$(id -un)}"
