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
# one line per stage: its tasks (the stage itself, or one per search candidate), each as name/stage/instance
# from compactlm's own task list (pipeline.run_tasks), so nothing here takes a task name apart
STAGES=$(PYTHONPATH="$HOME_DIR/src" python - "$CONFIG" <<'PY'
import sys
from compactlm.pipeline import load_config, run_tasks
lines = {}
for t in run_tasks(load_config(sys.argv[1])):
    lines.setdefault(t.stage, []).append(f"{t.name}/{t.stage}/{t.instance or ''}")
print("\n".join(" ".join(tasks) for tasks in lines.values()))
PY
)
LOGS=$(dirname "$CONFIG")/slurm_logs
mkdir -p "$LOGS"
prev=""
while read -r tasks; do
    ids=()
    for entry in $tasks; do
        IFS=/ read -r task stage instance <<< "$entry"
        res=(--nodes=1)
        case $stage in
            model|data) ;;
            distill) res=(--nodes="$NODES"); [ "$GPUS" -gt 0 ] && res+=(--gpus-per-node="$GPUS") ;;
            candidate) [ "$GPUS" -gt 0 ] && res+=(--gpus-per-node="$GPUS") ;;
            *) [ "$GPUS" -gt 0 ] && res+=(--gpus-per-node=1) ;;
        esac
        # a stage that failed for good cancels the ones after it instead of leaving them pending forever
        dep=(); [ -n "$prev" ] && dep=(--dependency=afterok:"$prev" --kill-on-invalid-dep=yes)
        id=$(sbatch --parsable --job-name="compactlm-$task" --time="$TIME" --output="$LOGS/$task-%j.out" \
            "${res[@]}" "${dep[@]}" "$@" "$HERE/stage.sbatch" "$stage" "$CONFIG" ${instance:+"$stage=$instance"})
        echo "$task: job $id"
        ids+=("$id")
    done
    prev=$(IFS=:; echo "${ids[*]}")
done <<< "$STAGES"
echo "logs: $LOGS   status: sacct -j <job> or squeue -u ${USER:-$(id -un)}"
