#!/usr/bin/env bash
# Start (or, when it already runs, verify) a REAL single-node Slurm cluster with accounting on this machine:
# munged, MariaDB (mariadbd), slurmdbd, slurmctld and slurmd, all started directly (no systemd), all state,
# configuration, sockets and logs under one state dir. Run as root. Safe to run again: a second run finds
# the running daemons, starts only what is missing and verifies.
#
#   tests/slurm/start_slurm.sh [--install] [--help]
#
#   --install   apt-get update + install the Debian packages first when they are missing
#
# Environment (all optional):
#   COMPACTLM_SLURM_DIR       state dir                        [/tmp/compactlm-slurm]
#   COMPACTLM_SLURM_CLUSTER   ClusterName                      [compactlm]
#   COMPACTLM_SLURM_USERS     extra users given the account     (root and $SUDO_USER always are)
#   COMPACTLM_SLURM_DB_PORT   MariaDB TCP port on 127.0.0.1    [3307] (not 3306: a packaged mariadb may run)
#   COMPACTLM_SLURM_PORTS     "ctld slurmd dbd" ports           ["6817 6818 6819"]
#   COMPACTLM_SLURM_TIMEOUT   seconds to wait for each step    [60]
#
# Clients find the cluster through SLURM_CONF=<state dir>/slurm.conf; when /etc/slurm/slurm.conf does not
# exist it is also linked there, so that plain `sinfo`/`sbatch` work in any shell (stop_slurm.sh removes
# the link again). The last line printed is a one-line status beginning with "slurm: up".
set -euo pipefail

PACKAGES="slurm-wlm slurmdbd munge mariadb-server"
INSTALL_CMD="apt-get install -y --no-install-recommends $PACKAGES"

STATE=${COMPACTLM_SLURM_DIR:-/tmp/compactlm-slurm}
CLUSTER=${COMPACTLM_SLURM_CLUSTER:-compactlm}
ACCOUNT=compactlm
PARTITION=debug
DB_PORT=${COMPACTLM_SLURM_DB_PORT:-3307}
read -r CTLD_PORT SLURMD_PORT DBD_PORT <<<"${COMPACTLM_SLURM_PORTS:-6817 6818 6819}"
TIMEOUT=${COMPACTLM_SLURM_TIMEOUT:-60}
# Slurm keeps a requeued job ineligible for AuthInfo cred_expire (+1) seconds (default 120 s; the minimum
# Slurm accepts is 5). 5 s keeps requeue tests fast; it is also the job-step credential lifetime, which
# only has to cover prolog + launch on this one node.
CRED_EXPIRE=5

INSTALL=0
for arg in "$@"; do
    case "$arg" in
        --install) INSTALL=1 ;;
        -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "start_slurm.sh: unknown argument: $arg" >&2; exit 2 ;;
    esac
done

T0=$(date +%s.%N)
STARTED=""
log() { echo "start_slurm: $*" >&2; }
die() {
    echo "start_slurm: ERROR: $*" >&2
    for f in "$STATE"/log/*.log; do
        [[ -s "$f" ]] || continue
        echo "----- last lines of $f -----" >&2
        tail -n 15 "$f" >&2
    done
    exit 1
}

# ---------------------------------------------------------------------------------------------- packages
need_bins=(munged mungekey mariadbd mariadb-install-db mariadb mariadb-admin slurmdbd slurmctld slurmd
           sbatch sacct sacctmgr sinfo scontrol)
missing_bins() {
    local b out=()
    for b in "${need_bins[@]}"; do command -v "$b" >/dev/null 2>&1 || out+=("$b"); done
    # the MySQL accounting plugin comes in its own package (a dependency of slurmdbd)
    if ! compgen -G "/usr/lib/*/slurm-wlm/accounting_storage_mysql.so" >/dev/null \
       && ! compgen -G "/usr/lib*/slurm/accounting_storage_mysql.so" >/dev/null; then
        out+=("accounting_storage_mysql.so")
    fi
    echo "${out[*]}"
}
PATH=$PATH:/usr/sbin:/sbin
miss=$(missing_bins)
if [[ -n "$miss" ]]; then
    if [[ $INSTALL == 1 ]]; then
        [[ $(id -u) == 0 ]] || { echo "start_slurm.sh: --install needs root" >&2; exit 1; }
        log "installing: $PACKAGES"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q >&2
        apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=600 $PACKAGES >&2
        miss=$(missing_bins)
        [[ -z "$miss" ]] || { echo "start_slurm.sh: still missing after install: $miss" >&2; exit 1; }
    else
        echo "start_slurm.sh: Slurm is not installed (missing: $miss). Install it with:" >&2
        echo "  $INSTALL_CMD" >&2
        echo "(or run: $0 --install)" >&2
        exit 3
    fi
fi

export SLURM_CONF=$STATE/slurm.conf
MUNGE_SOCKET=$STATE/munge-run/munge.socket.2
DB_SOCKET=$STATE/mysql/mysqld.sock
HOST=$(hostname -s)
CPUS=$(OMP_NUM_THREADS= OMP_THREAD_LIMIT= nproc)  # plain nproc honours these, and `make test` sets OMP_NUM_THREADS=1

pidfile() {  # pidfile <daemon>: mariadbd runs as mysql and keeps its pid file in its own dir
    if [[ $1 == mariadbd ]]; then echo "$STATE/mysql/mariadbd.pid"; else echo "$STATE/run/$1.pid"; fi
}
pid_alive() {  # pid_alive <daemon>: its pid file names a live process of that command
    local f pid
    f=$(pidfile "$1")
    [[ -s "$f" && -r "$f" ]] || return 1
    pid=$(<"$f")
    [[ "$pid" =~ ^[0-9]+$ && -d /proc/$pid ]] || return 1   # (kill -0 fails for non-root)
    [[ "$(cat /proc/"$pid"/comm 2>/dev/null)" == "$1" ]]
}
wait_for() {  # wait_for <what> <command...>: poll until the command succeeds or TIMEOUT passes
    local what=$1; shift
    local end=$((SECONDS + TIMEOUT))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < end)) || die "timed out after ${TIMEOUT}s waiting for $what"
        sleep 0.2
    done
}
db() { mariadb --no-defaults -S "$DB_SOCKET" -u root "$@"; }

node_idle() {
    local s
    s=$(sinfo -h -n "$HOST" -o %T 2>/dev/null) || return 1
    [[ "$s" =~ ^(idle|mixed|allocated|completing)$ ]]   # not "idle*" (not responding), not drained/down
}
sacct_works() { sacct -n -X -a -S now-1minutes -o JobID >/dev/null 2>&1; }

status_line() {
    local ver took
    ver=$(sinfo -V 2>/dev/null | awk '{print $2}')
    took=$(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
    echo "slurm: up ($1) version=$ver cluster=$CLUSTER node=$HOST cpus=$CPUS state=$(sinfo -h -n "$HOST" -o %T)" \
         "partition=$PARTITION account=$ACCOUNT enforce=associations SLURM_CONF=$SLURM_CONF in ${took}s"
}

ALL_UP=1
for d in munged mariadbd slurmdbd slurmctld slurmd; do
    pid_alive "$d" || ALL_UP=0
done
if [[ $(id -u) != 0 ]]; then
    [[ $ALL_UP == 1 ]] || { echo "start_slurm.sh: must run as root to start the daemons" >&2; exit 1; }
    # Not root, everything runs already: verify it answers.
    wait_for "node $HOST to be idle (sinfo)" node_idle
    wait_for "sacct to answer" sacct_works
    status_line "already running"
    exit 0
fi
# One start at a time (two pytest sessions may start the cluster together).
exec 9>>"$STATE.lock"   # (the daemons are started with 9>&- so that they do not inherit the lock)
flock -w 300 9 || die "another start_slurm.sh holds $STATE.lock"
# As root, always go through every step: each one is skipped when already done, and a configuration
# that changed since the daemons started (e.g. an edited script) restarts the daemons that read it.

stop_daemon() {  # stop_daemon <name>: SIGTERM the daemon of this state dir and wait for it to go
    local pid i
    pid_alive "$1" || return 0
    pid=$(<"$(pidfile "$1")")
    log "configuration changed: restarting $1"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 300; i++)); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
}

# ------------------------------------------------------------------------------------------ state dir
mkdir -p "$STATE"/{run,log,ctld,slurmd,munge-key,munge-run,mysql}
chmod 755 "$STATE" "$STATE"/{run,log,munge-run}
chmod 700 "$STATE/munge-key" "$STATE/ctld" "$STATE/slurmd"

# ---------------------------------------------------------------------------------------------- munge
if [[ ! -s "$STATE/munge-key/munge.key" ]]; then
    mungekey --create --keyfile="$STATE/munge-key/munge.key"
fi
chmod 600 "$STATE/munge-key/munge.key"
if ! pid_alive munged; then
    rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
    munged --socket="$MUNGE_SOCKET" --key-file="$STATE/munge-key/munge.key" \
           --pid-file="$STATE/run/munged.pid" --log-file="$STATE/log/munged.log" \
           --seed-file="$STATE/munge-key/munged.seed" 9>&- \
        || die "munged did not start"
    STARTED+=" munged"
fi
wait_for "munged" bash -c "munge -n -S '$MUNGE_SOCKET' | unmunge -S '$MUNGE_SOCKET'"

# ------------------------------------------------------------------------------------------- MariaDB
DB_USER=$(id -u mysql >/dev/null 2>&1 && echo mysql || echo root)
if [[ ! -d "$STATE/mysql/data/mysql" ]]; then
    rm -rf "$STATE/mysql/data"
    chown "$DB_USER:" "$STATE/mysql"
    mariadb-install-db --no-defaults --datadir="$STATE/mysql/data" --user="$DB_USER" \
        --auth-root-authentication-method=socket --skip-test-db >"$STATE/log/mariadb-install.log" 2>&1 \
        || die "mariadb-install-db failed (see $STATE/log/mariadb-install.log)"
fi
chown -R "$DB_USER:" "$STATE/mysql"
chmod 755 "$STATE/mysql"
if ! pid_alive mariadbd; then
    touch "$STATE/log/mariadbd.log"; chown "$DB_USER:" "$STATE/log/mariadbd.log"
    setsid mariadbd --no-defaults --user="$DB_USER" --datadir="$STATE/mysql/data" \
        --socket="$DB_SOCKET" --port="$DB_PORT" --bind-address=127.0.0.1 --skip-name-resolve \
        --pid-file="$(pidfile mariadbd)" --log-error="$STATE/log/mariadbd.log" \
        --innodb-buffer-pool-size=512M --innodb-log-file-size=64M --innodb-lock-wait-timeout=900 \
        --max-connections=64 </dev/null >>"$STATE/log/mariadbd.log" 2>&1 9>&- &
    STARTED+=" mariadbd"
fi
wait_for "MariaDB on $DB_SOCKET" mariadb-admin --no-defaults -S "$DB_SOCKET" -u root ping
wait_for "MariaDB pid file" test -s "$(pidfile mariadbd)"
chmod 644 "$(pidfile mariadbd)"    # so that a non-root second run can check it

if [[ ! -s "$STATE/db.pass" ]]; then
    (umask 077; head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$STATE/db.pass")
fi
DB_PASS=$(<"$STATE/db.pass")
db <<SQL || die "could not create the accounting database"
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
SQL

# --------------------------------------------------------------------------------------- Slurm config
# RealMemory: 90% of what slurmd detects, so the node never drains for "Low RealMemory".
MEM=$(slurmd -C 2>/dev/null | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -n1)
[[ -n "$MEM" ]] || MEM=$(awk '/MemTotal/{print int($2/1024)}' /proc/meminfo)
MEM=$((MEM * 9 / 10))

write_if_changed() {  # write_if_changed <file> <mode>: stdin -> file when the content differs; 0 if written
    local tmp
    tmp=$(mktemp "$1.XXXXXX")
    cat >"$tmp"
    chmod "$2" "$tmp"
    if [[ -f "$1" ]] && cmp -s "$tmp" "$1"; then rm -f "$tmp"; return 1; fi
    mv -f "$tmp" "$1"
}

DBD_CHANGED=0 CONF_CHANGED=0
write_if_changed "$STATE/slurmdbd.conf" 600 <<EOF && DBD_CHANGED=1
# written by tests/slurm/start_slurm.sh
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=root
DebugLevel=info
LogFile=$STATE/log/slurmdbd.log
PidFile=$STATE/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF

write_if_changed "$STATE/slurm.conf" 644 <<EOF && CONF_CHANGED=1
# written by tests/slurm/start_slurm.sh -- one node ($HOST), one partition ($PARTITION), accounting via slurmdbd
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=$CRED_EXPIRE
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig=$STATE/plugstack.conf
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=1
ReturnToService=2
JobRequeue=1
MinJobAge=30
KillWait=5
MailProg=/bin/true
InactiveLimit=0
Waittime=0
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
# for slurmdbd connections the munge socket is taken from here, not from AuthInfo
AccountingStoragePass=$MUNGE_SOCKET
AccountingStorageEnforce=associations
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
: >"$STATE/plugstack.conf"   # empty: keep the packaged /etc/slurm/plugstack.conf.d out of this cluster

# Let plain client commands (and NeMo-Run's local sbatch/sacct calls) find this cluster in any shell.
if [[ -d /etc/slurm && ! -e /etc/slurm/slurm.conf && ! -L /etc/slurm/slurm.conf ]]; then
    ln -s "$SLURM_CONF" /etc/slurm/slurm.conf
fi

# -------------------------------------------------------------------------------------------- slurmdbd
if [[ $CONF_CHANGED == 1 ]]; then stop_daemon slurmd; stop_daemon slurmctld; fi
if [[ $DBD_CHANGED == 1 ]]; then stop_daemon slurmdbd; fi
if ! pid_alive slurmdbd; then
    slurmdbd 9>&- || die "slurmdbd did not start"
    STARTED+=" slurmdbd"
fi
wait_for "slurmdbd (sacctmgr show cluster)" sacctmgr -n -P show cluster format=cluster

# cluster, account and users in accounting (each only when missing)
if [[ -z "$(sacctmgr -n -P show cluster "$CLUSTER" format=cluster)" ]]; then
    sacctmgr -i add cluster "$CLUSTER" >&2 || die "sacctmgr add cluster failed"
fi
if [[ -z "$(sacctmgr -n -P show account "$ACCOUNT" format=account)" ]]; then
    sacctmgr -i add account "$ACCOUNT" Cluster="$CLUSTER" Description="compactlm tests" \
        Organization=compactlm >&2 || die "sacctmgr add account failed"
fi
USERS="root ${SUDO_USER:-} $(id -un) ${COMPACTLM_SLURM_USERS:-}"
for u in $(echo "$USERS" | tr ', ' '\n\n' | sort -u); do
    id -u "$u" >/dev/null 2>&1 || { log "skipping unknown user $u"; continue; }
    if [[ -z "$(sacctmgr -n -P show assoc where cluster="$CLUSTER" account="$ACCOUNT" user="$u" format=user)" ]]; then
        sacctmgr -i add user "$u" Account="$ACCOUNT" Cluster="$CLUSTER" >&2 \
            || die "sacctmgr add user $u failed"
    fi
done

# ----------------------------------------------------------------------------------- slurmctld, slurmd
if ! pid_alive slurmctld; then
    slurmctld 9>&- || die "slurmctld did not start"
    STARTED+=" slurmctld"
fi
wait_for "slurmctld (scontrol ping)" bash -c "scontrol ping | grep -q UP"
if ! pid_alive slurmd; then
    slurmd 9>&- || die "slurmd did not start"
    STARTED+=" slurmd"
fi

wait_for "node $HOST to be idle (sinfo)" node_idle
wait_for "sacct to answer" sacct_works
if [[ -n "$STARTED" ]]; then status_line "started:$STARTED"; else status_line "already running"; fi
