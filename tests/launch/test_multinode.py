"""Several machines without SLURM: two `accelerate launch` invocations on 127.0.0.1 (machine rank 0 and 1,
one process each) train together, the recipe for machines without a scheduler. And train.sbatch/node.sh's
wiring on GPU nodes, which this machine lacks (fake srun, scontrol and accelerate); real two-node SLURM jobs
are in launch/test_slurm.py."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
from conftest import BIN, REPO, free_port
from conftest import test_env as child_env  # not collected as a test


@pytest.mark.slow
def test_two_machines_train_together(mnist_shards, tmp_path):
    run_dir, port = tmp_path / "run", free_port()
    env = child_env(ACCELERATE_USE_CPU="true")
    procs = []
    for machine in (0, 1):
        cmd = [str(BIN / "accelerate"), "launch", "--config_file", "launch/accelerate/cpu.yaml",
               "--num_machines", "2", "--machine_rank", str(machine), "--num_processes", "2",
               "--main_process_ip", "127.0.0.1", "--main_process_port", str(port), "--rdzv_backend", "static",
               "-m", "distgan", "train", "--config", "configs/debug.yaml", f"data.dir={mnist_shards}",
               f"run.dir={run_dir}", "wandb.mode=offline", "train.steps=20", "dist.timeout_s=60"]
        log = (tmp_path / f"machine{machine}.log").open("w")
        procs.append((subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    try:
        codes = [p.wait(timeout=240) for p, _ in procs]
    finally:
        for p, log in procs:
            if p.poll() is None:
                p.kill()
            log.close()
    logs = [(tmp_path / f"machine{m}.log").read_text()[-5000:] for m in (0, 1)]
    assert codes == [0, 0], "\n\n".join(logs)

    reports = [json.loads((run_dir / "ranks" / f"rank_{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in reports] == [0, 1]
    assert [r["world_size"] for r in reports] == [2, 2]
    assert [r["step"] for r in reports] == [20, 20]
    assert reports[0]["g_sha256"] == reports[1]["g_sha256"]
    assert reports[0]["d_sha256"] == reports[1]["d_sha256"]
    assert (run_dir / "checkpoints" / "step_0000020" / "COMPLETE").exists()


FAKE_SRUN = """#!/usr/bin/env bash
# Fake srun for a 2-node job: run the command once per node with that node's SLURM_NODEID.
while [[ $1 == -* ]]; do echo "$1" >> "$FAKE_DIR/srun_args"; shift; done
for node in 0 1; do SLURM_NODEID=$node SLURMD_NODENAME=gpu-a1$((7 + node)) "$@" || exit $?; done
"""
# Node names that DNS does not know: the address must come from `scontrol show node`.
FAKE_SCONTROL = """#!/usr/bin/env bash
[[ "$1 $2" == "show hostnames" ]] && { printf 'gpu-a17\\ngpu-a18\\n'; exit 0; }
[[ "$1 $2 $3 $4" == "show node -o gpu-a17" ]] \\
    && { echo "NodeName=gpu-a17 Arch=x86_64 NodeAddr=10.1.0.17 NodeHostName=gpu-a17 Port=0"; exit 0; }
exit 1
"""
FAKE_ACCELERATE = """#!PYTHON
import json, os, signal, sys
with open(os.path.join(os.environ["FAKE_DIR"], "accelerate_calls"), "a") as f:
    f.write(json.dumps({"argv": sys.argv[1:], "usr1_ignored": signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN,
                        "use_cpu": os.environ.get("ACCELERATE_USE_CPU"),
                        "omp": os.environ.get("OMP_NUM_THREADS")}) + "\\n")
"""


def _write_tool(bin_dir: Path, name: str, text: str) -> None:
    path = bin_dir / name
    path.write_text(text.replace("PYTHON", str(BIN / "python")))
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def _arg(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


@pytest.mark.parametrize("gpus, procs, config, omp", [("", 2, "cpu.yaml", "4"), ("4", 4, "multi_gpu.yaml", "2")])
def test_sbatch_wires_each_node(tmp_path, gpus, procs, config, omp):
    """Each node works out its own process count (its GPUs, else 2 CPU processes) and gets its own machine
    rank ($SLURM_NODEID expanded on the node, accelerate #2816); the rendezvous is the first node's address
    as SLURM has it (`scontrol show node`, not DNS), the port comes from the job id, USR1 is ignored in the
    launcher, and the task's CPUs are shared by the node's processes."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL), ("accelerate", FAKE_ACCELERATE)):
        _write_tool(bin_dir, name, text)
    env = {k: v for k, v in child_env().items()
           if not k.startswith(("SLURM_", "CUDA_VISIBLE", "DISTGAN_", "ACCELERATE_", "OMP_"))}
    env.update(PATH=f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin", FAKE_DIR=str(tmp_path), VIRTUAL_ENV="fake",
               SLURM_JOB_ID="123457", SLURM_JOB_NAME="gan", SLURM_JOB_NUM_NODES="2",
               SLURM_JOB_NODELIST="gpu-a[17-18]", SLURM_SUBMIT_DIR=str(REPO), SLURM_CPUS_PER_TASK="8")
    if gpus:
        env["SLURM_GPUS_ON_NODE"] = gpus
    proc = subprocess.run(["bash", "launch/slurm/train.sbatch", "configs/debug.yaml", "train.steps=7"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    calls = [json.loads(line) for line in (tmp_path / "accelerate_calls").read_text().splitlines()]
    assert len(calls) == 2
    for node, call in enumerate(calls):
        argv = call["argv"]
        assert argv[0] == "launch"
        assert call["usr1_ignored"] is True
        assert call["use_cpu"] == (None if gpus else "true")  # no GPU on the node: CPU processes with gloo
        assert call["omp"] == omp  # 8 CPUs shared by the node's processes
        assert _arg(argv, "--machine_rank") == str(node)
        assert _arg(argv, "--num_machines") == "2"
        assert _arg(argv, "--num_processes") == str(2 * procs)
        assert _arg(argv, "--main_process_ip") == "10.1.0.17"
        assert _arg(argv, "--main_process_port") == str(20000 + 123457 % 10000)
        assert _arg(argv, "--config_file").endswith(f"launch/accelerate/{config}")
        tail = argv[argv.index("-m"):]
        assert tail == ["-m", "distgan", "train", "--config", "configs/debug.yaml", "train.steps=7",
                        "run.dir=runs/gan-123457"]
    assert f"2 node(s) x {procs} process(es)" in proc.stdout
    assert "node gpu-a18 is machine 1 of 2" in proc.stdout
    srun_args = (tmp_path / "srun_args").read_text().split()
    assert "--ntasks-per-node=1" in srun_args and "--nodes=2" in srun_args and "--cpus-per-task=8" in srun_args


@pytest.mark.parametrize("args, env_extra, message", [
    ([], {"SLURM_JOB_ID": "1"}, "usage: sbatch"),
    (["configs/missing.yaml"], {"SLURM_JOB_ID": "1"}, "config file not found"),
    (["configs/debug.yaml"], {}, "not inside a SLURM job"),
])
def test_sbatch_usage_errors(args, env_extra, message):
    env = {k: v for k, v in child_env().items() if not k.startswith("SLURM_")}
    env.update(env_extra)
    proc = subprocess.run(["bash", "launch/slurm/train.sbatch", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
