#!/usr/bin/env bash
# Start a local MLflow tracking server whose store lives in this folder.
#   bash mlflow/server.sh            # http://127.0.0.1:5000, SQLite backend, artifacts here
#   PORT=5001 bash mlflow/server.sh
# Runs are under "Model training" -> runs of each experiment (the job prints the link,
# http://127.0.0.1:5000/#/experiments/<id>/runs); MLflow 3 opens experiments in its GenAI view.
# `mlflow` is the checkout's .venv/bin/mlflow (made by `make setup`) when it exists, else the
# one on PATH; MLFLOW=/path/to/mlflow overrides. No activated venv is needed.
# It binds to 127.0.0.1 only: the MLflow server has no authentication of its own. To share it,
# keep it private and reach it through an SSH tunnel (ssh -L 5000:127.0.0.1:5000 host), or
# run it with `--app-name basic-auth` (MLflow's built-in basic authentication) behind TLS.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv_mlflow="$here/../.venv/bin/mlflow"
if [[ -z "${MLFLOW:-}" ]]; then
  if [[ -x "$venv_mlflow" ]]; then MLFLOW="$venv_mlflow"; else MLFLOW=mlflow; fi
fi
if ! command -v "$MLFLOW" >/dev/null 2>&1; then
  echo "error: no mlflow: run 'make setup' in $(dirname "$here") (or set MLFLOW=/path/to/mlflow)" >&2
  exit 127
fi
mkdir -p "$here/store" "$here/artifacts"
exec "$MLFLOW" server \
  --backend-store-uri "sqlite:///$here/store/mlflow.db" \
  --artifacts-destination "$here/artifacts" \
  --host "${HOST:-127.0.0.1}" --port "${PORT:-5000}"
