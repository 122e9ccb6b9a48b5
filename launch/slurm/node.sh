#!/usr/bin/env bash
# One node's share of a SLURM job: train.sbatch starts it on every node of the job with
# `srun --ntasks-per-node=1`, and it execs `accelerate launch` as machine $SLURM_NODEID of
# $SLURM_JOB_NUM_NODES. Everything that depends on the node is worked out here, on the node itself:
#   - processes: the node's GPUs (SLURM_GPUS_ON_NODE, CUDA_VISIBLE_DEVICES, nvidia-smi), one per GPU;
#     without GPUs, DISTGAN_PROCS_PER_NODE CPU processes (default 2) joined with gloo;
#   - OMP_NUM_THREADS: the task's CPUs (--cpus-per-task) shared among those processes.
# Every node must get the same number of GPUs (ask with --gpus-per-node); the total process count is
# nodes x this node's count.
#
# usage (inside a job step): node.sh MAIN_ADDR MAIN_PORT SCRIPT|-m MODULE [ARGS...]
#   MAIN_ADDR: the address of the job's first node as SLURM knows it (train.sbatch: `scontrol show node`)
set -euo pipefail

die() { echo "node.sh: error: $*" >&2; exit 2; }
[[ $# -ge 3 ]] || die "usage: node.sh MAIN_ADDR MAIN_PORT SCRIPT|-m MODULE [ARGS...]"
MAIN_ADDR=$1
MAIN_PORT=$2
shift 2
[[ -n ${SLURM_NODEID:-} ]] || die "not inside a SLURM job step (no SLURM_NODEID); train.sbatch runs it with srun"

# Numbers from the environment reach bash arithmetic, which would run code in a value such as
# `a[$(cmd)]`: each must be a plain integer first (no leading zeros: bash reads 010 as octal).
need_int() {  # NAME MIN: die unless $NAME is an integer >= MIN
    [[ ${!1} =~ ^(0|[1-9][0-9]{0,17})$ ]] && (( ${!1} >= $2 )) || die "$1 must be an integer >= $2, got '${!1}'"
}
need_int SLURM_NODEID 0
need_int MAIN_PORT 1
NUM_NODES=${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}
need_int NUM_NODES 1
for name in SLURM_CPUS_PER_TASK DISTGAN_PROCS_PER_NODE; do
    [[ -z ${!name:-} ]] || need_int "$name" 1
done
[[ -z ${SLURM_GPUS_ON_NODE:-} ]] || need_int SLURM_GPUS_ON_NODE 0

count_gpus() {
    if [[ -n ${SLURM_GPUS_ON_NODE:-} ]]; then echo "$SLURM_GPUS_ON_NODE"; return; fi
    if [[ -n ${CUDA_VISIBLE_DEVICES:-} && ${CUDA_VISIBLE_DEVICES} != "NoDevFiles" ]]; then
        tr ',' '\n' <<<"$CUDA_VISIBLE_DEVICES" | grep -c .; return
    fi
    if command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true; return; fi
    echo 0
}
GPUS=$(count_gpus)
if [[ -n ${DISTGAN_PROCS_PER_NODE:-} ]]; then
    PROCS_PER_NODE=$DISTGAN_PROCS_PER_NODE
elif (( GPUS > 0 )); then
    PROCS_PER_NODE=$GPUS
else
    PROCS_PER_NODE=2
fi
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
if (( GPUS > 0 )); then
    ACCEL_CONFIG=$HERE/launch/accelerate/multi_gpu.yaml
    KIND="$GPUS GPUs"
else
    ACCEL_CONFIG=$HERE/launch/accelerate/cpu.yaml
    KIND="CPU, gloo"
    # torchrun does not pass use_cpu on to the workers: make them pick the CPU and gloo.
    export ACCELERATE_USE_CPU=true
fi
if [[ -z ${OMP_NUM_THREADS:-} ]]; then
    OMP_NUM_THREADS=$(( ${SLURM_CPUS_PER_TASK:-$PROCS_PER_NODE} / PROCS_PER_NODE ))
    (( OMP_NUM_THREADS >= 1 )) || OMP_NUM_THREADS=1
    export OMP_NUM_THREADS
fi

NODE_NAME=${SLURMD_NODENAME:-$(hostname)}
if (( SLURM_NODEID == 0 )); then
    echo "train.sbatch: $NUM_NODES node(s) x $PROCS_PER_NODE process(es) ($KIND), main $MAIN_ADDR:$MAIN_PORT"
fi
echo "node.sh: node $NODE_NAME is machine $SLURM_NODEID of $NUM_NODES: $PROCS_PER_NODE process(es) ($KIND)," \
     "OMP_NUM_THREADS=$OMP_NUM_THREADS"

# The launcher (torchrun's agent) would die of SIGUSR1/2, which SLURM sends to every process of the step
# (--signal=USR1@120, `scancel --signal=USR1`): it ignores them; the training processes it starts install
# their own handlers, which replace the inherited SIG_IGN. TERM is not ignored: torchrun forwards it to
# the workers, which save a checkpoint and stop.
trap '' USR1 USR2
exec accelerate launch --config_file "$ACCEL_CONFIG" \
    --num_machines "$NUM_NODES" --machine_rank "$SLURM_NODEID" \
    --num_processes $((NUM_NODES * PROCS_PER_NODE)) \
    --main_process_ip "$MAIN_ADDR" --main_process_port "$MAIN_PORT" \
    --rdzv_backend static --same_network \
    "$@"
