#!/usr/bin/env bash
# A local Ray cluster on this machine, for trying `ray job submit` before a cloud cluster.
#   bash cluster/local_cluster.sh up      # head node on 127.0.0.1 (dashboard 8265, GCS 6379)
#   bash cluster/local_cluster.sh down
# Jobs submitted to it keep their results in this checkout, not in the temporary copy Ray runs
# them in (<ray temp>/session_*/runtime_resources/working_dir_files/, deleted with the
# session): the head starts with two variables that every job inherits,
#   BSM_RAY_STORAGE_ROOT=<this checkout>   a relative storage path (`runs`) goes under it;
#   MLFLOW_TRACKING_URI=http://127.0.0.1:5000, the server of `bash mlflow/server.sh` (its store
#     is mlflow/store/), started here in the background if nothing answers there.
# Set either before `up` to use another place (e.g. MLFLOW_TRACKING_URI=sqlite:////abs/db).
# Ports and size: RAY_PORT, DASHBOARD_PORT, MLFLOW_PORT, NUM_CPUS; arguments after `up` go to
# `ray start`. `ray` (and the jobs' `python`) are the checkout's .venv when it exists (made by
# `make setup`): no activated venv is needed. RAY=/path/to/ray overrides.
# Ray's dashboard / job API and GCS port have no authentication beyond Ray's token: they are
# bound to 127.0.0.1 here and must never be opened to the internet (reach a remote cluster's
# dashboard with `ray dashboard <cluster.yaml>` or an SSH tunnel).
# Ray >= 2.59 turns token authentication on for such clusters; clients (`ray job submit`) must
# use it too: RAY_AUTH_MODE=token (the token is ~/.ray/auth_token), as the printed command does.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -x "$root/.venv/bin/ray" ]]; then
  export PATH="$root/.venv/bin:$PATH"  # the head's processes, and so the jobs' `python`
  client=".venv/bin/ray"
else
  client="ray"
fi
RAY="${RAY:-ray}"
if ! command -v "$RAY" >/dev/null 2>&1; then
  echo "error: no ray: run 'make setup' in $root (or set RAY=/path/to/ray)" >&2
  exit 127
fi
export RAY_AUTH_MODE=token
dashboard_port="${DASHBOARD_PORT:-8265}"
mlflow_port="${MLFLOW_PORT:-5000}"
server_pid="$root/mlflow/store/server.pid"  # set when this script started the MLflow server

answers() {  # does an HTTP server answer at $1?
  "$(command -v python3 || command -v python)" -c \
    "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)" "$1" 2>/dev/null
}

case "${1:-up}" in
  up)
    if [[ -z "${MLFLOW_TRACKING_URI:-}" ]]; then
      MLFLOW_TRACKING_URI="http://127.0.0.1:$mlflow_port"
      if ! answers "$MLFLOW_TRACKING_URI/health"; then
        mkdir -p "$root/mlflow/store"
        # Its own session (setsid), so `down` stops the server and its workers as one group.
        PORT="$mlflow_port" $(command -v setsid || true) nohup bash "$root/mlflow/server.sh" \
          > "$root/mlflow/store/server.log" 2>&1 &
        echo $! > "$server_pid"
        for _ in $(seq 90); do
          answers "$MLFLOW_TRACKING_URI/health" && break
          kill -0 "$(cat "$server_pid")" 2>/dev/null || {
            echo "error: the MLflow server did not start; see $root/mlflow/store/server.log" >&2
            exit 1
          }
          sleep 1
        done
        answers "$MLFLOW_TRACKING_URI/health" || {
          echo "error: the MLflow server did not answer in 90 s; see $root/mlflow/store/server.log" >&2
          exit 1
        }
        echo "MLflow server on $MLFLOW_TRACKING_URI (store $root/mlflow/store/)"
      fi
    fi
    export MLFLOW_TRACKING_URI
    export BSM_RAY_STORAGE_ROOT="${BSM_RAY_STORAGE_ROOT:-$root}"
    "$RAY" start --head --node-ip-address 127.0.0.1 --port "${RAY_PORT:-6379}" \
      --dashboard-host 127.0.0.1 --dashboard-port "$dashboard_port" \
      --num-cpus "${NUM_CPUS:-4}" "${@:2}"
    echo "jobs of this cluster write runs under $BSM_RAY_STORAGE_ROOT and track to $MLFLOW_TRACKING_URI"
    echo "submit from $root with:"
    echo "  RAY_AUTH_MODE=token RAY_ADDRESS=http://127.0.0.1:$dashboard_port $client job submit --working-dir . -- python jobs/anneal_mix.py"
    ;;
  down)
    "$RAY" stop
    if [[ -f "$server_pid" ]]; then
      kill -- "-$(cat "$server_pid")" 2>/dev/null || kill "$(cat "$server_pid")" 2>/dev/null || true
      rm -f "$server_pid"
    fi
    ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
