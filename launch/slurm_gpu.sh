#!/usr/bin/env bash
# Multi-node GPU run under Slurm: one process per node, every GPU of the node in the mesh.
#   sbatch --nodes=2 --gres=gpu:8 launch/slurm_gpu.sh configs/cifar10_trades.py runs/trades
# The workdir and data_dir must be on a filesystem every node sees. Only process 0 prints and
# writes run files; every process reads its own slice of each batch.
#SBATCH --ntasks-per-node=1
#SBATCH --time=48:00:00
set -euo pipefail
config=$1; workdir=$2; shift 2
# The same flags as two processes on one machine (README, "Several processes"): process 0's
# node is the coordinator; KDROBUST_PORT picks its port (default 12355).
head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export KDROBUST_COORDINATOR="$head:${KDROBUST_PORT:-12355}"
srun bash -c 'exec python -m kdrobust.main --config "$0" --workdir "$1" --jax_distributed \
  --coordinator_address="$KDROBUST_COORDINATOR" --num_processes="$SLURM_NTASKS" \
  --process_id="$SLURM_PROCID" "${@:2}"' "$config" "$workdir" "$@"
