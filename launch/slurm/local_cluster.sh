#!/usr/bin/env bash
# A SLURM cluster on this one machine, for the launch tests and for trying train.sbatch by hand: one
# slurmctld and N slurmd daemons (nodes n1..nN). Each node is a slurmd of its own on 127.0.0.1 with its
# own port, pid file, log and spool directory (Debian's SLURM is built with MULTIPLE_SLURMD). The node
# names are not host names, as on a real cluster whose DNS does not know them: a job must take addresses
# from SLURM (`scontrol show node`), as launch/slurm/node.sh does.
#
#   bash launch/slurm/local_cluster.sh start [--nodes N]   # install (apt) if missing, configure, start; idempotent
#   bash launch/slurm/local_cluster.sh stop                # stop every slurmd, slurmctld and munged
#   bash launch/slurm/local_cluster.sh status              # exit 0 when every node is up and usable
#
# Needs root. No cgroups (proctrack/linuxproc, task/none), no accounting daemon, requeue allowed.
# Writes /etc/slurm/slurm.conf (marked as ours; an existing foreign one is left alone and we refuse
# to start). Daemon logs: /var/log/slurm/. DISTGAN_SLURM_CPUS sets the CPUs of each node (default 4,
# whatever the hardware has: the nodes share this machine's cores, and the tests run two jobs at once); DISTGAN_SLURM_NODES the node count
# when --nodes is not given (default 1).
set -euo pipefail

CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
MARK="# written by distgan launch/slurm/local_cluster.sh"
NODES=${DISTGAN_SLURM_NODES:-1}
CPUS=${DISTGAN_SLURM_CPUS:-4}
FIRST_PORT=17001  # node nI's slurmd listens on FIRST_PORT + I - 1
LOG_DIR=/var/log/slurm
START_TIMEOUT=${DISTGAN_SLURM_START_TIMEOUT:-60}

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

node_names() { seq -f 'n%g' 1 "$NODES"; }

node_list() { if (( NODES == 1 )); then echo n1; else echo "n[1-$NODES]"; fi; }

write_config() {
    mkdir -p "$CONF_DIR" "$LOG_DIR" /var/spool/slurmctld
    local node i=0
    for node in $(node_names); do mkdir -p "/var/spool/slurmd/$node"; done
    if [[ -f $CONF ]] && ! grep -qF "$MARK" "$CONF"; then
        die "$CONF exists and was not written by this script; refusing to overwrite it"
    fi
    local tmp
    tmp=$(mktemp "$CONF_DIR/.slurm.conf.XXXXXX")
    cat >"$tmp" <<EOF
$MARK
ClusterName=distgan
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmctldPidFile=/run/slurmctld.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
# One slurmd per node on this host (%n: the node name).
SlurmdSpoolDir=/var/spool/slurmd/%n
SlurmdPidFile=/run/slurmd-%n.pid
SlurmdLogFile=$LOG_DIR/slurmd-%n.log
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
EOF
    for node in $(node_names); do
        echo "NodeName=$node NodeHostname=localhost NodeAddr=127.0.0.1 Port=$((FIRST_PORT + i)) CPUs=$CPUS" \
             "Sockets=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=1000 State=UNKNOWN" >>"$tmp"
        i=$((i + 1))
    done
    echo "PartitionName=debug Nodes=$(node_list) Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO" >>"$tmp"
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

slurmd_running() {  # NODE: its own slurmd is alive (found by its pid file)
    local pid
    pid=$(cat "/run/slurmd-$1.pid" 2>/dev/null) || return 1
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == slurmd ]]
}

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

node_states() { sinfo -h -N -o '%N %T' 2>/dev/null || true; }  # one line per node: NAME STATE

usable() {  # every node of this configuration answers and takes jobs
    local states node state
    states=$(node_states)
    for node in $(node_names); do
        state=$(awk -v n="$node" '$1 == n {print $2; exit}' <<<"$states")
        [[ $state =~ ^(idle|mixed|allocated|completing)$ ]] || return 1
    done
}

resume_down_nodes() {  # a node left down or drained by an earlier run takes jobs again
    local name state
    while read -r name state; do
        if [[ $state =~ (drain|down|fail) ]]; then
            scontrol update nodename="$name" state=resume >/dev/null 2>&1 || true
        fi
    done < <(node_states)
}

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
    local node
    for node in $(node_names); do
        if ! slurmd_running "$node"; then
            /usr/sbin/slurmd -N "$node" 2>>"$LOG_DIR/slurmd-$node.start.log" \
                || die "slurmd -N $node did not start (see $LOG_DIR/slurmd-$node.log)"
        fi
    done
    local t0=$SECONDS
    while (( SECONDS - t0 < START_TIMEOUT )); do
        if usable; then
            # The controller may report a saved state before every slurmd answers: run a real step on each.
            if timeout 20 srun --immediate=10 -N"$NODES" -n"$NODES" -t 1 -J distgan-probe true >/dev/null 2>&1; then
                log "SLURM is up: $NODES node(s) $(node_list), $CPUS CPUs each"
                return 0
            fi
        else
            resume_down_nodes
        fi
        sleep 0.5
    done
    die "SLURM did not come up within ${START_TIMEOUT}s (nodes: $(node_states | tr '\n' ' ')); see $LOG_DIR/*.log"
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
    NODES=$(node_states | grep -c '^n[0-9]' || true)
    if (( NODES > 0 )) && usable; then
        node_states
    else
        echo "SLURM is not usable (nodes: '$(node_states | tr '\n' ' ')')" >&2
        return 1
    fi
}

usage() { echo "usage: $0 start [--nodes N] | stop | status" >&2; exit 2; }

command=${1:-}
[[ $# -gt 0 ]] && shift
while [[ $# -gt 0 ]]; do
    case $1 in
        --nodes) [[ $# -ge 2 ]] || usage; NODES=$2; shift 2 ;;
        --nodes=*) NODES=${1#--nodes=}; shift ;;
        *) usage ;;
    esac
done
[[ $NODES =~ ^[1-9][0-9]?$ ]] && (( NODES <= 16 )) || die "--nodes must be an integer from 1 to 16, got '$NODES'"
[[ $CPUS =~ ^[1-9][0-9]{0,2}$ ]] || die "DISTGAN_SLURM_CPUS must be a positive integer, got '$CPUS'"

case $command in
    start) do_start ;;
    stop) do_stop ;;
    status) do_status ;;
    *) usage ;;
esac
