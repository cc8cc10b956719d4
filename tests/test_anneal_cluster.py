"""The main job on a real two-node Ray cluster: a head started by `cluster/local_cluster.sh up`
(without the venv on PATH) plus a second `ray start --address` node with its own resources,
`ray job submit` of jobs/prepare_data.py (its units as Ray tasks on both nodes, the dataset
of a local preparation), then of jobs/anneal_mix.py without a storage path (the head's
BSM_RAY_STORAGE_ROOT and MLFLOW_TRACKING_URI keep its results out of the job's temporary
working directory, and a job without them refuses to start), trials on both nodes, the second
node killed mid-sweep (the sweep goes on on the head), ASHA stopping the starved trial, the
driver stopped, `--resume` finishing the sweep without re-running a finished trial, the grid
check's facts recomputed from the trials' own files and Tune's state, and the MLflow store
holding the parent run and one child run per trial.

This module starts its own cluster, so it runs last (conftest orders `cluster` tests after the
rest) and shuts the session's in-process Ray instance down first: two Ray instances on one
machine confuse Ray Train's placement-group cleaner.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from conftest import kill_node

from bsm_ray.ingest.prepare import PrepareConfig, prepare_dataset
from bsm_ray.train.context import read_metrics
from bsm_ray.tune.sweep import finished_metrics

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

ROOT = Path(__file__).resolve().parents[1]
# Two nodes on one machine: each would size its object store at 30% of RAM by default, and
# two of those leave too little memory for the job (torch's libraries then fail to load).
OBJECT_STORE = 1 << 30
BIN = Path(sys.executable).parent
STEPS = 10  # per trial
GRACE = 5  # ASHA's only rung: a trial reaching it behind a better one is stopped there
# Three fixed points, two at a time: the first two start together, one per node; the third,
# starved of the pair sources the objective scores, starts when one of them has finished (so
# ASHA has a result at the rung to compare it with) and is clearly worse there (objective at
# step 5: 2.16 against 2.08 and 2.04 when measured in one process), so ASHA stops it.
CANDIDATES = ("[{single_dna: 1, refseq_pair: 1, gene_pair: 1}, "
              "{single_dna: 0.5, refseq_pair: 1, gene_pair: 1}, "
              "{single_dna: 1, refseq_pair: 0.02, gene_pair: 0.02}]")  # fmt: skip
OBJECTIVE = {"refseq_pair": 1.0, "gene_pair": 1.0}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray(*args: str, env: dict, check: bool = True, timeout: float = 120):
    return subprocess.run([str(BIN / "ray"), *args], env=env, capture_output=True, text=True,
                          check=check, timeout=timeout)  # fmt: skip


def _status(address: str, job_id: str, env: dict) -> str:
    """The job's status from `ray job status` (the CLI words it in a sentence on stderr).

    The CLI rather than the SDK: this process imported Ray without token authentication, and
    Ray reads RAY_AUTH_MODE once per process."""
    p = _ray("job", "status", "--address", address, job_id, env=env, check=False)
    out = p.stdout + p.stderr
    for word, status in (("succeeded", "SUCCEEDED"), ("failed", "FAILED"),
                         ("was stopped", "STOPPED"), ("RUNNING", "RUNNING"),
                         ("PENDING", "PENDING")):  # fmt: skip
        if word in out:
            return status
    raise AssertionError(f"ray job status {job_id}: {out[-2000:]}")


def _logs(address: str, job_id: str, env: dict) -> str:
    return _ray("job", "logs", "--address", address, job_id, env=env, check=False).stdout


def _wait_status(address: str, job_id: str, env: dict, timeout: float = 600) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = _status(address, job_id, env)
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            return status
        time.sleep(2)
    raise AssertionError(f"job {job_id} still {status} after {timeout} s")


def _json(*args: str, env: dict):
    return json.loads(_ray(*args, "--format", "json", env=env).stdout)


def _train_workers(address: str, env: dict) -> dict[str, set[int]]:
    """Node id -> pids of the alive Ray Train workers (the state API through the CLI)."""
    p = _ray("list", "actors", "--address", address, "--filter", "state=ALIVE", "--format",
             "json", "--detail", "--limit", "1000", env=env, check=False)  # fmt: skip
    if p.returncode != 0 or not p.stdout.lstrip().startswith("["):  # "No resource in ..."
        return {}
    nodes: dict[str, set[int]] = {}
    for a in json.loads(p.stdout):
        if "RayTrainWorker" in a["class_name"]:
            nodes.setdefault(a["node_id"], set()).add(int(a["pid"]))
    return nodes


def _trace_pids(trial_dir: Path) -> set[int]:
    """Pids of the workers that trained a trial's steps (its `trace: true` lines; a line
    being written is skipped)."""
    return {json.loads(x)["pid"] for f in trial_dir.glob("trace/rank*.jsonl")
            for x in f.read_text().splitlines() if x.endswith("}")}  # fmt: skip


def _tune_trials(sweep: Path) -> dict[str, tuple[str, int]]:
    """Trial id -> (status, last step reported to Tune), from Tune's own experiment state in
    the sweep's storage (written every ~10 s and at the end of a fit)."""
    states = sorted((sweep / "tune").glob("experiment_state-*.json"),
                    key=lambda f: f.stat().st_mtime)  # fmt: skip
    if not states:
        return {}
    try:
        data = json.loads(states[-1].read_text())
    except ValueError:  # being written
        return {}
    out = {}
    for trial_json, runtime_json in data["trial_data"]:
        trial, runtime = json.loads(trial_json), json.loads(runtime_json)
        last = runtime.get("last_result") or {}
        if isinstance(last, str):
            last = json.loads(last)
        out[trial["trial_id"]] = (trial["status"], int(last.get("step", 0)))
    return out


def _objective_at(trial_dir: Path, step: int) -> float:
    """The objective at `step`, recomputed from the trial's own metrics.jsonl (the last
    evaluation at that step: a restarted run may have logged it more than once)."""
    m = [m for m in read_metrics(trial_dir) if m["step"] == step and "val/loss" in m][-1]
    return sum(w * m[f"val/loss/{s}"] for s, w in OBJECTIVE.items()) / sum(OBJECTIVE.values())


@pytest.fixture
def cluster(tmp_path):
    import ray

    ray.shutdown()  # the session's in-process instance, if a test started it
    gcs, dash = _free_port(), _free_port()
    node2_tmp = tempfile.mkdtemp(prefix="ray2-", dir="/tmp")  # short: socket paths are capped
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    env["RAY_AUTH_MODE"] = "token"  # the job client must use the cluster's token (~/.ray)
    # The head as a user starts it, with the checkout's script and no venv on PATH (the script
    # finds .venv itself). Its environment, which every job inherits, says where results go:
    # runs under this test's folder, MLflow into this test's store.
    store = tmp_path / "mlflow" / "mlflow.db"
    head_env = {**env, "RAY_PORT": str(gcs), "DASHBOARD_PORT": str(dash), "NUM_CPUS": "2",
                "MLFLOW_TRACKING_URI": f"sqlite:///{store}",
                "BSM_RAY_STORAGE_ROOT": str(tmp_path)}  # fmt: skip
    if (ROOT / ".venv" / "bin" / "ray").is_file():
        head_env["PATH"] = os.pathsep.join(
            d for d in os.environ.get("PATH", "").split(os.pathsep)
            if d and Path(d).resolve() != BIN.resolve())  # fmt: skip
    else:  # the suite runs from another environment
        head_env["RAY"] = str(BIN / "ray")
    up = subprocess.run(
        ["bash", str(ROOT / "cluster" / "local_cluster.sh"), "up", "--object-store-memory",
         str(OBJECT_STORE), "--include-dashboard", "true", "--disable-usage-stats"],
        env=head_env, capture_output=True, text=True, timeout=120)  # fmt: skip
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        # A second node with its own resources (here on the same machine) and its own temp
        # dir: sharing the head's, its runtime-env agent garbage-collected the job's working
        # directory (which it does not reference) under the running driver.
        _ray("start", "--address", f"127.0.0.1:{gcs}", "--node-ip-address", "127.0.0.1",
             "--num-cpus", "2", "--object-store-memory", str(OBJECT_STORE),
             "--temp-dir", node2_tmp, "--disable-usage-stats", env=env)  # fmt: skip
        address = f"http://127.0.0.1:{dash}"
        deadline = time.time() + 60
        while True:
            nodes = _json("list", "nodes", "--address", address, env=env)
            alive = [n for n in nodes if n["state"] == "ALIVE"]
            if len(alive) == 2:
                break
            assert time.time() < deadline, nodes
            time.sleep(1)
        head = next(n["node_id"] for n in alive if n["is_head_node"])
        second = next(n["node_id"] for n in alive if not n["is_head_node"])
        yield address, env, head, second, node2_tmp, up.stdout, store
    finally:
        _ray("stop", "--force", env=env, check=False)
        shutil.rmtree(node2_tmp, ignore_errors=True)


def test_anneal_on_two_nodes_survives_node_loss_and_resumes(cluster, tmp_path):
    address, env, head, second, node2_tmp, up_stdout, db = cluster
    client_ray = ".venv/bin/ray" if (ROOT / ".venv" / "bin" / "ray").is_file() else "ray"
    assert (f"RAY_AUTH_MODE=token RAY_ADDRESS={address} {client_ray} job submit --working-dir . "
            f"-- python jobs/anneal_mix.py") in up_stdout  # fmt: skip
    assert f"write runs under {tmp_path} and track to sqlite:///{db}" in up_stdout
    # The data: jobs/prepare_data.py submitted to the cluster, its units as Ray tasks on both
    # nodes; the same dataset as a preparation in this process.
    data = tmp_path / "sample"
    _ray("job", "submit", "--address", address, "--working-dir", str(ROOT), "--submission-id",
         "prepare", "--no-wait", "--", "python", "jobs/prepare_data.py", "--set",
         f"output_dir={data}", "--set", "parallel=ray", "--set", "unit_bytes=32768",
         env=env)  # fmt: skip
    local = prepare_dataset(PrepareConfig(output_dir=str(tmp_path / "local"), progress=False,
                                          parallel="local", unit_bytes=32768))  # fmt: skip
    assert _wait_status(address, "prepare", env, timeout=300) == "SUCCEEDED", (
        _logs(address, "prepare", env)[-3000:])
    prepared = _logs(address, "prepare", env)
    sha = local.manifest["dataset_sha256"]
    assert f"sha256 {sha[:16]}" in prepared and f"{local.num_units} units of work as Ray " \
        "tasks" in prepared, prepared[-3000:]  # fmt: skip
    assert json.loads((data / "manifest.json").read_text())["dataset_sha256"] == sha
    tasks = _json("list", "tasks", "--address", address, "--filter", "func_or_class_name=run_unit",
                  "--detail", "--limit", "10000", env=env)  # fmt: skip
    assert {t["node_id"] for t in tasks} == {head, second}, tasks[:3]
    phase_note = f"prepare_data.py on the cluster: {local.num_units} units on both nodes"
    # No storage_path: the embedded default's `runs` goes under the head's BSM_RAY_STORAGE_ROOT.
    sweep = tmp_path / "runs" / "sweep"
    args = ["--set", "name=sweep", "--set", f"train.data.dataset={data}",
            "--set", "search.num_samples=3", "--set", f"search.candidates={CANDIDATES}",
            "--set", "search.neighbours=false", "--set", f"objective={json.dumps(OBJECTIVE)}",
            "--set", f"steps={STEPS}", "--set", "eval_every=5",
            "--set", f"asha.grace_period={GRACE}", "--set", "base.steps=10",
            "--set", "train.trace=true"]  # fmt: skip

    def submit(job_id: str, *extra: str, runtime_env: dict | None = None) -> None:
        renv = ["--runtime-env-json", json.dumps(runtime_env)] if runtime_env else []
        _ray("job", "submit", "--address", address, "--working-dir", str(ROOT),
             "--submission-id", job_id, *renv, "--no-wait",
             "--", "python", "jobs/anneal_mix.py", *args, *extra, env=env)  # fmt: skip

    t0 = time.time()

    def phase(what: str) -> None:  # shown with -s: where the test's minutes go
        print(f"[cluster test {time.time() - t0:5.0f} s] {what}", flush=True)

    phase(phase_note)

    # Without a storage root, the same submission would write into Ray's temporary copy of the
    # checkout: it refuses to start, in one line saying why and what to set.
    submit("refused", runtime_env={"env_vars": {"BSM_RAY_STORAGE_ROOT": ""}})
    submit("anneal-1")
    trials = sweep / "trials"
    deadline = time.time() + 600
    assert _wait_status(address, "refused", env, timeout=120) == "FAILED"
    refused = _logs(address, "refused", env).strip().splitlines()
    assert refused[-1].startswith("error: this Ray job runs in a temporary working directory ("), (
        refused[-5:])
    assert "storage_path" in refused[-1] and "BSM_RAY_STORAGE_ROOT" in refused[-1]
    assert "MLflow" not in refused[-1]  # the head's MLFLOW_TRACKING_URI is outside it
    job_dir = Path(refused[-1].split("(", 1)[1].split(")", 1)[0])
    assert "runtime_resources/working_dir_files" in str(job_dir), job_dir
    phase("a job without a storage root refused to start")

    def running(job_id: str) -> None:
        assert time.time() < deadline, _logs(address, job_id, env)[-3000:]
        assert _status(address, job_id, env) in ("RUNNING", "PENDING"), (
            _logs(address, job_id, env)[-3000:])

    # Trials run on both nodes (the state API shows where their Ray Train workers are). While
    # a trial's workers run on the second node, lose that node as a spot reclaim would: the
    # trial's Train controller runs beside its driver on the head, and restarts the worker
    # group there (from the trial's last checkpoint, if it has one by then).
    seen, workers = set(), {}
    while second not in workers or head not in seen:
        running("anneal-1")
        workers = _train_workers(address, env)
        seen |= workers.keys()
        time.sleep(1)
    killed = workers[second]
    assert kill_node(node2_tmp) > 0
    # The victim, if it had trained a step by then (its trace names its workers' pids).
    victim = next((d for d in trials.glob("*") if killed & _trace_pids(d)), None)
    phase(f"second node killed while Train workers {sorted(killed)} ran there "
          f"({'in trial ' + victim.name if victim else 'starting up'})")  # fmt: skip
    # The starved third trial starts once a trial has finished, and ASHA stops it at its rung.
    # Wait until Tune's own saved state says so (so the resumed sweep restores that decision),
    # then stop the job.
    starved = None
    while True:
        running("anneal-1")
        if starved is None:  # the trial whose mix is nearly all single_dna
            mixes = {d.parent.name: json.loads(d.read_text())["train"]["data"]["mix"]
                     for d in trials.glob("*/trial.json")}  # fmt: skip
            starved = next((t for t, mix in mixes.items() if mix["single_dna"] > 0.9), None)
        state = _tune_trials(sweep)
        if starved in state and state[starved][0] == "TERMINATED":
            break
        time.sleep(1)
    assert state[starved][1] == GRACE, state  # stopped at the rung, not trained to the end
    assert finished_metrics(trials / starved, STEPS) is None
    finished = [d for d in trials.glob("*") if finished_metrics(d, STEPS) is not None]
    assert finished, state
    phase(f"ASHA stopped trial {starved} at step {GRACE}; stopping the job")
    _ray("job", "stop", "--address", address, "anneal-1", env=env)
    assert _wait_status(address, "anneal-1", env) == "STOPPED"
    (tmp_path / "anneal-1.log").write_text(_logs(address, "anneal-1", env))  # for a post-mortem
    assert not (sweep / "summary.json").exists()  # stopped mid-sweep
    before = {d.name: (d / "metrics.jsonl").read_text() for d in finished}

    # The stopped sweep resumes on the one node left.
    submit("anneal-2", "--resume")
    phase("resubmitted with --resume")
    status = _wait_status(address, "anneal-2", env, timeout=900)
    logs = _logs(address, "anneal-2", env)
    (tmp_path / "anneal-2.log").write_text(logs)
    phase(f"resumed job {status}")
    assert status == "SUCCEEDED", logs[-4000:]

    # The finished trials were not trained again: their step logs are unchanged.
    for name, text in before.items():
        assert (trials / name / "metrics.jsonl").read_text() == text, name
    # Everything is in durable storage (the head's BSM_RAY_STORAGE_ROOT), nothing in the job's
    # temporary working directory.
    assert (sweep / "best_mix.yaml").is_file() and (sweep / "objective_vs_mix.png").is_file()
    assert not (job_dir / "runs").exists() and not (job_dir / "mlflow" / "store").exists()
    summary = json.loads((sweep / "summary.json").read_text())
    assert len(summary["trials"]) == 3 and not summary["errors"]
    # Nothing of the sweep was lost with the node: every trial trained to its last step (the
    # grid check ran on the ones ASHA stopped), and the one that lost its workers, if it had
    # begun training, went on with other workers.
    for trial in summary["trials"]:
        assert max(m["step"] for m in read_metrics(trials / trial["trial_id"])) == STEPS
    if victim is not None:
        assert _trace_pids(victim) - killed, _trace_pids(victim)
    # The grid check, recomputed: Tune's state says which trials ASHA stopped (at least the
    # starved one) and how far each got; the objectives at the last step come from each
    # trial's own metrics.jsonl.
    tune_state = _tune_trials(sweep)
    assert sorted(tune_state) == sorted(t["trial_id"] for t in summary["trials"])
    assert all(status == "TERMINATED" for status, _ in tune_state.values()), tune_state
    stopped = {t for t, (_, step) in tune_state.items() if step < STEPS}
    assert starved in stopped
    rows = {t["trial_id"]: t for t in summary["trials"]}
    for t, (_, step) in tune_state.items():
        assert rows[t]["steps_asha"] >= step and (rows[t]["steps_asha"] < STEPS) == (t in stopped)
    assert summary["grid_steps"] == 3 * STEPS
    assert sum(step for _, step in tune_state.values()) <= summary["asha_steps"] < 3 * STEPS
    assert summary["asha_steps"] == sum(r["steps_asha"] for r in rows.values())
    full = {t: _objective_at(trials / t, STEPS) for t in tune_state}
    for t, value in full.items():
        assert rows[t]["objective_full"] == pytest.approx(value, abs=1e-6), t
    grid_winner = min(full, key=full.get)
    asha_winner = min((t for t in full if t not in stopped), key=full.get)
    assert summary["grid_winner"]["trial_id"] == grid_winner
    assert summary["winner"]["trial_id"] == asha_winner
    assert summary["same_winner"] == (grid_winner == asha_winner)
    assert "winning mix: single_dna" in logs
    assert f"the full grid is 3 trials x {STEPS} steps = {3 * STEPS}" in logs
    verdict = "the same as" if grid_winner == asha_winner else "NOT the same as"
    assert (f"Full-grid winner: trial {grid_winner} (objective {full[grid_winner]:.4f}); "
            f"{verdict} ASHA's winner.") in logs  # fmt: skip
    # The winner as a next-round config that jobs/pretrain.py accepts.
    best = sweep / "best_mix.yaml"
    assert yaml.safe_load(best.read_text())["data"]["mix"] == pytest.approx(
        summary["winner"]["mix"], abs=1e-6)
    printed = subprocess.run([sys.executable, str(ROOT / "jobs" / "pretrain.py"), "--round", "2",
                              "--config", str(best), "--print-config"],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert yaml.safe_load(printed)["data"]["mix"] == yaml.safe_load(best.read_text())["data"]["mix"]

    # MLflow: one parent run, one child run per trial with params and step metrics.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("bsm_ray-anneal")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.tags["bsm_ray.trial_id"] for r in children) == sorted(
        t["trial_id"] for t in summary["trials"])
    for child in children:
        assert child.data.params["data.dataset"] == str(data)
        assert child.data.params["schedule.kind"] == "anneal"
        history = client.get_metric_history(child.info.run_id, "train/loss")
        assert len(history) >= 5
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"summary.json", "best_mix.yaml", "objective_vs_mix.png"} <= artifacts
    assert parent.data.metrics["sweep/grid_steps"] == 3 * STEPS
    assert parent.data.metrics["sweep/asha_steps"] == summary["asha_steps"]
