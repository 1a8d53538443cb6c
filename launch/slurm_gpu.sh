#!/usr/bin/env bash
# Multi-node GPU run under Slurm: one process per node, every GPU of the node in the mesh.
#   sbatch --nodes=2 --gres=gpu:8 launch/slurm_gpu.sh configs/cifar10_trades.py runs/trades
#SBATCH --ntasks-per-node=1
#SBATCH --time=48:00:00
set -euo pipefail
config=$1; workdir=$2; shift 2
# jax.distributed.initialize() reads the Slurm environment; every process runs the same command.
srun python -m kdrobust.main --config "$config" --workdir "$workdir" --jax_distributed "$@"
