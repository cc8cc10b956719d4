#!/usr/bin/env bash
# A local Ray cluster on this machine, for trying `ray job submit` before a cloud cluster.
#   bash cluster/local_cluster.sh up      # head node on 127.0.0.1 (dashboard 8265, GCS 6379)
#   bash cluster/local_cluster.sh down
# Ray's dashboard / job API and GCS port have no authentication beyond Ray's token: they are
# bound to 127.0.0.1 here and must never be opened to the internet (reach a remote cluster's
# dashboard with `ray dashboard <cluster.yaml>` or an SSH tunnel).
# Ray >= 2.59 turns token authentication on for such clusters; clients (`ray job submit`) must
# use it too: export RAY_AUTH_MODE=token (the token is ~/.ray/auth_token).
set -euo pipefail
RAY="${RAY:-ray}"
export RAY_AUTH_MODE=token
case "${1:-up}" in
  up)
    "$RAY" start --head --node-ip-address 127.0.0.1 --port 6379 \
      --dashboard-host 127.0.0.1 --dashboard-port 8265 --num-cpus "${NUM_CPUS:-4}"
    echo "submit with: RAY_AUTH_MODE=token RAY_ADDRESS=http://127.0.0.1:8265 ray job submit --working-dir . -- python jobs/anneal_mix.py"
    ;;
  down) "$RAY" stop ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
