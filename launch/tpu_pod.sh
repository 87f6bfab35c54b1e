#!/usr/bin/env bash
# Run a jaxrec config on every host of a Cloud TPU VM pod slice. JAX finds the
# other hosts itself (jax.distributed.initialize() without arguments).
#   launch/tpu_pod.sh TPU_NAME ZONE CONFIG [--set key=value ...]
# Assumes the repository is checked out at ~/jaxrec on every host and installed
# with `pip install -e ".[tpu]"` (for example by a first run of this script with
# CONFIG=--install).
set -euo pipefail
tpu=${1:?usage: launch/tpu_pod.sh TPU_NAME ZONE CONFIG [--set k=v ...]}
zone=${2:?zone}
config=${3:?config}
shift 3
if [[ "$config" == "--install" ]]; then
  command='cd ~/jaxrec && pip install -e ".[tpu]"'
else
  command="cd ~/jaxrec && python -m jaxrec.launch --distributed --config $config $*"
fi
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "$command"
