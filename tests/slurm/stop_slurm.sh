#!/usr/bin/env bash
# Stop the single-node Slurm cluster started by tests/slurm/start_slurm.sh: cancel its jobs, then stop
# slurmd, slurmctld, slurmdbd, MariaDB and munged (SIGTERM, SIGKILL after a grace period), each through
# the pid file in the state dir, so nothing else on the machine is touched. Run as root.
#
#   tests/slurm/stop_slurm.sh [--keep-jobs] [--purge]
#
#   --keep-jobs  do not scancel the cluster's jobs first (slurmctld saves them; a restart recovers them)
#   --purge      also delete the state dir (configuration, munge key, accounting database, logs)
#
# Environment: COMPACTLM_SLURM_DIR (state dir, default /tmp/compactlm-slurm).
set -uo pipefail

STATE=${COMPACTLM_SLURM_DIR:-/tmp/compactlm-slurm}
KEEP_JOBS=0
PURGE=0
for arg in "$@"; do
    case "$arg" in
        --keep-jobs) KEEP_JOBS=1 ;;
        --purge) PURGE=1 ;;
        -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "stop_slurm.sh: unknown argument: $arg" >&2; exit 2 ;;
    esac
done
PATH=$PATH:/usr/sbin:/sbin
export SLURM_CONF=$STATE/slurm.conf

pid_of() {  # pid_of <name>: the live pid recorded in <state>/run/<name>.pid, if its command matches
    local f=$STATE/run/$1.pid pid
    [[ $1 == mariadbd ]] && f=$STATE/mysql/mariadbd.pid   # written by mariadbd itself (user mysql)
    [[ -s "$f" ]] || return 1
    pid=$(<"$f")
    [[ "$pid" =~ ^[0-9]+$ && -d /proc/$pid ]] || return 1   # (kill -0 fails for non-root)
    [[ "$(cat /proc/"$pid"/comm 2>/dev/null)" == "$1" ]] || return 1
    echo "$pid"
}

stop() {  # stop <name> [grace seconds]
    local name=$1 grace=${2:-20} pid i
    pid=$(pid_of "$name") || { echo "stop_slurm: $name not running"; return 0; }
    kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < grace * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || { echo "stop_slurm: stopped $name (pid $pid)"; return 0; }
        sleep 0.1
    done
    echo "stop_slurm: $name (pid $pid) ignored SIGTERM for ${grace}s; sending SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null
}

if [[ $KEEP_JOBS == 0 ]] && pid_of slurmctld >/dev/null; then
    jobs=$(squeue -h -o %A 2>/dev/null | tr '\n' ' ')
    if [[ -n "${jobs// }" ]]; then
        echo "stop_slurm: cancelling jobs: $jobs"
        # shellcheck disable=SC2086
        scancel $jobs 2>/dev/null
        for ((i = 0; i < 150; i++)); do   # up to 15 s for them to finish (KillWait is 5 s)
            [[ -z "$(squeue -h -o %A 2>/dev/null)" ]] && break
            sleep 0.1
        done
    fi
fi

stop slurmd
stop slurmctld
stop slurmdbd
stop mariadbd 60
stop munged

# the convenience link made by start_slurm.sh, only when it points at this state dir
if [[ -L /etc/slurm/slurm.conf && "$(readlink /etc/slurm/slurm.conf)" == "$STATE/slurm.conf" ]]; then
    rm -f /etc/slurm/slurm.conf
fi

if [[ $PURGE == 1 ]]; then
    case "$STATE" in
        /|/tmp|/root|/home|"") echo "stop_slurm: refusing to delete $STATE" >&2; exit 1 ;;
    esac
    rm -rf "$STATE" "$STATE.lock"
    echo "stop_slurm: removed $STATE"
fi
