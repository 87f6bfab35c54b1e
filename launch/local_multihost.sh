#!/usr/bin/env bash
# Run a jaxrec config as an N-process JAX job on this machine, the way a TPU pod
# runs it: each process gets DEVICES fake CPU devices and gloo collectives.
#   launch/local_multihost.sh CONFIG [PROCESSES=2] [DEVICES=4] [--set key=value ...]
set -euo pipefail
config=${1:?usage: launch/local_multihost.sh CONFIG [PROCESSES] [DEVICES] [--set k=v ...]}
processes=${2:-2}
devices=${3:-4}
shift $(( $# < 3 ? $# : 3 ))
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
for ((i = 0; i < processes; i++)); do
  JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=$devices" \
  JAXREC_COORDINATOR="127.0.0.1:$port" JAXREC_NUM_PROCESSES="$processes" JAXREC_PROCESS_ID="$i" \
    "${PYTHON:-python}" -m jaxrec.launch --distributed --config "$config" "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
trap - EXIT
exit $status
