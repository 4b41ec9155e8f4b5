#!/usr/bin/env bash
# A two-node Ray cluster on one machine, on loopback: what tests/ray/conftest.py starts,
# as a script you can run by hand.
#
#   bash ray_configs/local_cluster.sh start     # head (1 CPU) + one worker node (1 CPU)
#   bstune run examples/digits_mlp.py --space search_spaces/mlp_classifier.yaml \
#       --backend ray --address 127.0.0.2:6380 --trials 8 --budget-samples 30000 --out runs/ray-digits
#   bstune submit examples/digits_mlp.py --space search_spaces/mlp_classifier.yaml --address http://127.0.0.1:8266
#   bash ray_configs/local_cluster.sh stop
#
# What to change: PORT/DASHBOARD_PORT if taken; CPUS_PER_NODE (each trial takes one CPU by
# default, so this is how many trials a node runs at once). The dashboard and the Jobs API
# bind to 127.0.0.1 only; pass --dashboard-host 0.0.0.0 only behind a firewall.
# Each node gets its own agent ports: the defaults collide when two nodes share a host.
# The nodes use 127.0.0.2, not 127.0.0.1: Ray swaps 127.0.0.1 and localhost for the host's
# outward address, and would then talk over the network interface; 127.0.0.2 is loopback too
# on Linux (on macOS add it first: sudo ifconfig lo0 alias 127.0.0.2). Ray's GCS and raylets
# still listen on every interface, as Ray does; firewall their ports on a shared host.
set -euo pipefail

NODE_IP=${BSTUNE_NODE_IP:-127.0.0.2}
PORT=${PORT:-6380}
DASHBOARD_PORT=${DASHBOARD_PORT:-8266}
CPUS_PER_NODE=${CPUS_PER_NODE:-1}
RAY=${RAY:-ray}
export RAY_USAGE_STATS_ENABLED=0
# Ray 2.60 turns token authentication on where ~/.ray/auth_token exists, and a node or driver
# sends the token only with RAY_AUTH_MODE=token: without it the worker node cannot join. Set
# it for the nodes (the head makes the token when there is none); bstune's driver sets it
# itself for --address where the token exists. RAY_AUTH_MODE=disabled turns it all off.
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}

case "${1:-start}" in
  start)
    if [ "$RAY_AUTH_MODE" = token ] && [ -z "${RAY_AUTH_TOKEN:-}" ] \
        && [ ! -f "${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}" ]; then
      "$RAY" get-auth-token --generate >/dev/null  # writes ~/.ray/auth_token
    fi
    "$RAY" start --head --node-ip-address "$NODE_IP" --port "$PORT" --num-cpus "$CPUS_PER_NODE" \
      --include-dashboard true --dashboard-host 127.0.0.1 --dashboard-port "$DASHBOARD_PORT" \
      --dashboard-agent-listen-port 52401 --dashboard-agent-grpc-port 52402 \
      --metrics-export-port 52403 --runtime-env-agent-port 52404
    "$RAY" start --address "$NODE_IP:$PORT" --node-ip-address "$NODE_IP" --num-cpus "$CPUS_PER_NODE" \
      --dashboard-agent-listen-port 52411 --dashboard-agent-grpc-port 52412 \
      --metrics-export-port 52413 --runtime-env-agent-port 52414
    "$RAY" status --address "$NODE_IP:$PORT"
    ;;
  stop)
    "$RAY" stop  # stops every Ray process of this user on the machine
    ;;
  *)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
