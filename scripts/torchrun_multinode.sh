#!/usr/bin/env bash
# Multi-node OmniMAE pretraining with torchrun, without a scheduler: start this same script on every
# node (in tmux, pdsh, ...). The c10d rendezvous on MASTER_ADDR:MASTER_PORT assigns the ranks; node 0
# needs no special flag.
#
#   MASTER_ADDR=node0 NNODES=4 scripts/torchrun_multinode.sh data.image.root=/nfs/imagenet \
#       data.video.root=/nfs/ssv2 train.run_name=vitb_4nodes
#
# Every argument is a `key.sub=value` override of CONFIG. `kill -USR1 <this script's pid>` (on every
# node) asks the trainers to checkpoint at the next logging step and exit 0; start the script again
# and train.resume=auto continues from that checkpoint. Needs the repo installed (`pip install -e .`).
set -euo pipefail

: "${MASTER_ADDR:?set MASTER_ADDR to the hostname of one node (the rendezvous host)}"
: "${NNODES:?set NNODES to the number of nodes}"
MASTER_PORT="${MASTER_PORT:-29500}"
GPUS_PER_NODE="${GPUS_PER_NODE:-8}"
CONFIG="${CONFIG:-configs/in1k_ssv2_vitb.yaml}"
RDZV_ID="${RDZV_ID:-omnimae}"  # the same on every node of one job, different between jobs

cd "$(dirname "$0")/.."

# torchrun dies on SIGUSR1 (it handles only TERM/INT/HUP/QUIT, and forwards those with a 30 s grace
# before SIGKILL), so it ignores USR1 and this script hands the signal to its children, the trainers.
trap '' USR1
torchrun --nnodes "$NNODES" --nproc_per_node "$GPUS_PER_NODE" \
    --rdzv_backend c10d --rdzv_endpoint "$MASTER_ADDR:$MASTER_PORT" --rdzv_id "$RDZV_ID" \
    -m omnimae.cli "$CONFIG" train.resume=auto "$@" &
TORCHRUN_PID=$!
trap 'pkill -USR1 -P "$TORCHRUN_PID"' USR1

# `wait` returns early when a trapped signal arrives: wait again until torchrun has really exited.
while true; do
    status=0
    wait "$TORCHRUN_PID" || status=$?
    kill -0 "$TORCHRUN_PID" 2>/dev/null || break
done
exit "$status"
