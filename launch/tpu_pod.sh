#!/usr/bin/env bash
# Run on every worker of a Cloud TPU pod slice (same command on all hosts).
#   launch/tpu_pod.sh my-tpu us-central2-b configs/cifar10_pgd_at.py /mnt/shared/runs/x
# workdir and data_dir must be on a filesystem every host sees (NFS, Filestore or a gcsfuse mount).
# --jax_distributed as in README's "Several processes": on a TPU VM jax reads the coordinator,
# the process count and this worker's id from the TPU metadata, so the three flags
# (--coordinator_address, --num_processes, --process_id) may be left out; pass them after the
# workdir to override. Only process 0 prints and writes run files.
set -euo pipefail
tpu=$1; zone=$2; config=$3; workdir=$4; shift 4
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command \
  "cd kdrobust && python -m kdrobust.main --config $config --workdir $workdir --jax_distributed $*"
