#!/usr/bin/env bash
# Start a local MLflow tracking server whose store lives in this folder.
#   bash mlflow/server.sh            # http://127.0.0.1:5000, SQLite backend, artifacts here
#   PORT=5001 bash mlflow/server.sh
# It binds to 127.0.0.1 only: the MLflow server has no authentication of its own. To share it,
# keep it private and reach it through an SSH tunnel (ssh -L 5000:127.0.0.1:5000 host), or
# run it with `--app-name basic-auth` (MLflow's built-in basic authentication) behind TLS.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "$here/store" "$here/artifacts"
exec "${MLFLOW:-mlflow}" server \
  --backend-store-uri "sqlite:///$here/store/mlflow.db" \
  --artifacts-destination "$here/artifacts" \
  --host "${HOST:-127.0.0.1}" --port "${PORT:-5000}"
