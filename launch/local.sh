#!/usr/bin/env bash
# Run one experiment on this machine (CPU or its GPUs).
#   launch/local.sh configs/cifar10_pgd_at.py runs/c10_pgd_at [--config.key=value ...]
set -euo pipefail
config=$1; workdir=$2; shift 2
exec python -m kdrobust.main --config "$config" --workdir "$workdir" "$@"
