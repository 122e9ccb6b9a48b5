#!/usr/bin/env bash
# A one-node SLURM cluster on localhost, for the launch tests and for trying train.sbatch by hand.
#
#   bash launch/slurm/local_cluster.sh start    # install (apt) if missing, configure, start; idempotent
#   bash launch/slurm/local_cluster.sh stop     # stop slurmd, slurmctld and munged
#   bash launch/slurm/local_cluster.sh status   # exit 0 when the node is up and usable
#
# Needs root. No cgroups (proctrack/linuxproc, task/none), no accounting daemon, requeue allowed.
# Writes /etc/slurm/slurm.conf (marked as ours; an existing foreign one is left alone and we refuse
# to start). Daemon logs: /var/log/slurm/. Set DISTGAN_SLURM_CPUS to change the CPU count (default 2).
set -euo pipefail

CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
MARK="# written by distgan launch/slurm/local_cluster.sh"
NODE=localhost
CPUS=${DISTGAN_SLURM_CPUS:-2}
LOG_DIR=/var/log/slurm
START_TIMEOUT=${DISTGAN_SLURM_START_TIMEOUT:-40}

die() { echo "local_cluster.sh: error: $*" >&2; exit 1; }
log() { echo "local_cluster.sh: $*" >&2; }

need_root() { [[ $(id -u) -eq 0 ]] || die "must run as root (installs packages and starts daemons)"; }

install_packages() {
    local missing=()
    command -v slurmctld >/dev/null || missing+=(slurmctld)
    command -v slurmd >/dev/null || missing+=(slurmd)
    command -v sinfo >/dev/null || missing+=(slurm-client)
    command -v munged >/dev/null || missing+=(munge)
    [[ ${#missing[@]} -eq 0 ]] && return 0
    command -v apt-get >/dev/null || die "SLURM is not installed and apt-get is unavailable: install ${missing[*]}"
    log "installing ${missing[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    # The package lists may be missing or stale on a fresh machine: update once if the install fails.
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/tmp/distgan-slurm-apt.log 2>&1 || {
        apt-get update -q >>/tmp/distgan-slurm-apt.log 2>&1 || true
        apt-get install -y -q --no-install-recommends "${missing[@]}" >>/tmp/distgan-slurm-apt.log 2>&1
    } || die "apt-get install ${missing[*]} failed (see /tmp/distgan-slurm-apt.log)"
}

write_config() {
    mkdir -p "$CONF_DIR" "$LOG_DIR" /var/spool/slurmctld /var/spool/slurmd
    if [[ -f $CONF ]] && ! grep -qF "$MARK" "$CONF"; then
        die "$CONF exists and was not written by this script; refusing to overwrite it"
    fi
    local tmp
    tmp=$(mktemp "$CONF_DIR/.slurm.conf.XXXXXX")
    cat >"$tmp" <<EOF
$MARK
ClusterName=distgan
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
# No cgroups: track processes by parent pid, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# Use the CPU count below whatever the hardware says (tests run on small machines).
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
# Fast turnaround for tests: short kill wait, scheduler passes often.
KillWait=10
MinJobAge=300
SchedulerParameters=sched_interval=2,bf_interval=2
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS Sockets=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
    if [[ -f $CONF ]] && cmp -s "$tmp" "$CONF"; then
        rm -f "$tmp"
        CHANGED=0
    else
        chmod 644 "$tmp"
        mv "$tmp" "$CONF"
        CHANGED=1
    fi
}

running() { pgrep -x "$1" >/dev/null 2>&1; }

start_munge() {
    if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then return 0; fi
    if [[ ! -s /etc/munge/munge.key ]]; then
        if command -v mungekey >/dev/null; then mungekey --create --keyfile /etc/munge/munge.key
        else dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none; fi
    fi
    chown munge:munge /etc/munge/munge.key 2>/dev/null || true
    chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
    chmod 755 /run/munge
    if id munge >/dev/null 2>&1; then
        runuser -u munge -- /usr/sbin/munged || die "munged did not start (see /var/log/munge/munged.log)"
    else
        /usr/sbin/munged --force || die "munged did not start (see /var/log/munge/munged.log)"
    fi
    for _ in $(seq 50); do
        munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "munge does not work after starting munged (see /var/log/munge/munged.log)"
}

node_state() { sinfo -h -n "$NODE" -o '%T' 2>/dev/null | sed -n 1p; }  # sed: no SIGPIPE under pipefail

usable() { [[ $(node_state) =~ ^(idle|mixed|allocated|completing)$ ]]; }

do_start() {
    need_root
    install_packages
    write_config
    start_munge
    if [[ $CHANGED -eq 1 ]] && { running slurmctld || running slurmd; }; then
        log "configuration changed: restarting the daemons"
        do_stop_slurm
    fi
    if ! running slurmctld; then
        /usr/sbin/slurmctld -i 2>>"$LOG_DIR/slurmctld.start.log" \
            || die "slurmctld did not start (see $LOG_DIR/slurmctld.log)"
    fi
    if ! running slurmd; then
        /usr/sbin/slurmd -N "$NODE" 2>>"$LOG_DIR/slurmd.start.log" \
            || die "slurmd did not start (see $LOG_DIR/slurmd.log)"
    fi
    local t0=$SECONDS state
    while (( SECONDS - t0 < START_TIMEOUT )); do
        state=$(node_state || true)
        case $state in
            idle)
                # The controller may report a saved state before slurmd answers: run a real step.
                if ! timeout 20 srun --immediate=10 -N1 -n1 -t 1 -J distgan-probe true >/dev/null 2>&1; then
                    sleep 0.5
                    continue
                fi
                log "SLURM is up: node $NODE is $state ($(sinfo -h -o '%c' -n "$NODE") CPUs)"
                return 0 ;;
            mixed|allocated|completing)
                log "SLURM is up: node $NODE is $state ($(sinfo -h -o '%c' -n "$NODE") CPUs)"
                return 0 ;;
            *drain*|*down*|*fail*)
                # A node left down by an earlier run: resume it.
                scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true ;;
        esac
        sleep 0.5
    done
    die "SLURM did not come up within ${START_TIMEOUT}s (node state: '${state:-none}'; see $LOG_DIR/*.log)"
}

stop_daemon() {
    local name=$1 pids
    pids=$(pgrep -x "$name" || true)
    [[ -z $pids ]] && return 0
    # shellcheck disable=SC2086
    kill $pids 2>/dev/null || true
    for _ in $(seq 50); do running "$name" || return 0; sleep 0.1; done
    # shellcheck disable=SC2086
    kill -9 $pids 2>/dev/null || true
}

do_stop_slurm() { stop_daemon slurmd; stop_daemon slurmctld; }

do_stop() {
    need_root
    do_stop_slurm
    stop_daemon munged
    log "stopped"
}

do_status() {
    if usable; then
        echo "node $NODE: $(node_state)"
    else
        echo "SLURM is not usable (node state: '$(node_state || true)')" >&2
        return 1
    fi
}

case ${1:-} in
    start) do_start ;;
    stop) do_stop ;;
    status) do_status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
