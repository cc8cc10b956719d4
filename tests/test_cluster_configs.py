"""Cluster configs: the autoscaler's own validation (offline), the KubeRay manifests' required
fields, and secure defaults (no UI / API port open to the internet, no credentials in files)."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"
LAUNCHER_CONFIGS = [CLUSTER / "aws.yaml", CLUSTER / "gcp.yaml"]
KUBE_FILES = sorted((CLUSTER / "kuberay").glob("*.yaml"))
# Dashboard / job API, GCS, Ray client, MLflow, dashboard agent and metrics ports.
PRIVATE_PORTS = {8265, 6379, 10001, 5000, 52365, 8080}
OPEN = {"0.0.0.0/0", "::/0"}


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.name)
def test_launcher_config_passes_ray_validation(path):
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = _load(path)
    config = prepare_config(copy.deepcopy(raw))  # merges the provider's defaults, offline
    validate_config(config)  # Ray's JSON schema and its own checks; raises on errors
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert "min_workers" not in raw["available_node_types"][raw["head_node_type"]]
    workers = {k: v for k, v in types.items() if k != config["head_node_type"]}
    # on-demand and spot for both GPU shapes, autoscaled from zero
    assert len(workers) == 4 and all(v["min_workers"] == 0 < v["max_workers"] for v in
                                     workers.values())  # fmt: skip
    spot = [k for k in workers if k.endswith("-spot")]
    assert len(spot) == 2
    for name in spot:
        node = workers[name]["node_config"]
        if raw["provider"]["type"] == "aws":
            assert node["InstanceMarketOptions"]["MarketType"] == "spot"
        else:
            assert node["scheduling"][0]["provisioningModel"] == "SPOT"
    if raw["provider"]["type"] == "aws":
        assert "InstanceMarketOptions" not in head["node_config"]  # the head is on-demand
        shapes = {v["node_config"]["InstanceType"] for v in workers.values()}
        assert shapes == {"p5.48xlarge", "g6e.xlarge"}
    else:
        assert {v["node_config"]["machineType"] for v in workers.values()} == {
            "a3-highgpu-8g", "a2-highgpu-1g"}
    # installed the way the README does; the Ray processes run from that environment
    setup = " ".join(raw["head_setup_commands"] + raw["worker_setup_commands"])
    assert setup.count("make setup") == 2
    starts = raw["head_start_ray_commands"] + raw["worker_start_ray_commands"]
    assert all("~/bsm_ray/.venv/bin/ray" in c for c in starts if "ray start" in c)
    assert all("RAY_AUTH_MODE=token" in c for c in starts if "ray start" in c)


def test_ray_validation_rejects_a_broken_config():
    """The validation above can fail: an unknown node field and a missing head type are errors."""
    from jsonschema.exceptions import ValidationError
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = _load(CLUSTER / "aws.yaml")
    raw["available_node_types"]["head"]["instance"] = "m6i.2xlarge"
    with pytest.raises(ValidationError, match="instance"):
        validate_config(prepare_config(raw))
    raw = _load(CLUSTER / "gcp.yaml")
    raw["head_node_type"] = "cpu-head"
    with pytest.raises(ValueError, match="head_node_type"):
        validate_config(prepare_config(raw))


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.name)
def test_launcher_config_keeps_ports_private(path):
    raw = _load(path)
    head_start = " ".join(raw["head_start_ray_commands"])
    # the dashboard / job API listens on the head's loopback only (reach it by `ray dashboard`)
    assert "--dashboard-host=127.0.0.1" in head_start
    assert not re.search(r"--dashboard-host[= ]0\.0\.0\.0", head_start)
    assert not re.search(r"--ray-client-server-port|--include-dashboard[= ]false", head_start)
    # MLflow on the head's private address, never 0.0.0.0
    mlflow = [c for c in raw["head_start_ray_commands"] if "mlflow" in c]
    assert mlflow and all("HOST=$(hostname -I" in c for c in mlflow)
    assert "0.0.0.0" not in " ".join(mlflow)
    sg = raw["provider"].get("security_group", {})
    for rule in sg.get("IpPermissions", []):
        cidrs = {r["CidrIp"] for r in rule.get("IpRanges", [])}
        cidrs |= {r["CidrIpv6"] for r in rule.get("Ipv6Ranges", [])}
        if cidrs & OPEN:
            ports = set(range(rule["FromPort"], rule["ToPort"] + 1))
            assert rule["IpProtocol"] == "tcp" and ports == {22}, rule  # SSH only


def _kube_docs() -> list[tuple[Path, dict]]:
    docs = []
    for path in KUBE_FILES:
        docs += [(path, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def test_kuberay_manifests_parse_and_carry_required_fields():
    docs = _kube_docs()
    kinds = {d["kind"]: d for _, d in docs}
    assert {"RayCluster", "RayJob", "Deployment", "Service", "PersistentVolumeClaim",
            "NetworkPolicy"} <= set(kinds)  # fmt: skip
    for _, d in docs:
        assert d["apiVersion"] and d["metadata"]["name"]
    rc = kinds["RayCluster"]
    assert rc["apiVersion"] == "ray.io/v1" and rc["spec"]["enableInTreeAutoscaling"] is True
    import ray

    assert rc["spec"]["rayVersion"] == ray.__version__  # the image's Ray is the one we pin
    head = rc["spec"]["headGroupSpec"]
    assert head["template"]["spec"]["containers"][0]["image"]
    for group in rc["spec"]["workerGroupSpecs"]:
        assert group["minReplicas"] == 0 < group["maxReplicas"]
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) in (1, 8)
    job = kinds["RayJob"]
    assert job["apiVersion"] == "ray.io/v1"
    assert job["spec"]["entrypoint"].startswith("python jobs/anneal_mix.py")
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == rc["metadata"]["name"]
    claims = {d["metadata"]["name"] for _, d in docs if d["kind"] == "PersistentVolumeClaim"}
    mounted = {v["persistentVolumeClaim"]["claimName"] for _, d in docs
               for v in _pod_specs(d, volumes=True) if "persistentVolumeClaim" in v}
    assert mounted <= claims


def _pod_specs(doc: dict, volumes: bool = False) -> list:
    """Containers (or volumes) of every pod template in a manifest."""
    key = "volumes" if volumes else "containers"
    spec = doc.get("spec", {})
    templates = []
    if doc["kind"] == "RayCluster":
        templates = [spec["headGroupSpec"]["template"]] + [g["template"] for g in
                                                          spec["workerGroupSpecs"]]
    elif doc["kind"] == "Deployment":
        templates = [spec["template"]]
    elif doc["kind"] == "RayJob":
        templates = [spec["submitterPodTemplate"]]
    return [c for t in templates for c in t["spec"].get(key, [])]


def test_kuberay_exposes_nothing_outside_the_cluster():
    docs = _kube_docs()
    assert not [d for _, d in docs if d["kind"] == "Ingress"]
    for _, d in docs:
        if d["kind"] == "Service":
            assert d["spec"].get("type", "ClusterIP") == "ClusterIP", d["metadata"]["name"]
        if d["kind"] == "RayCluster":
            assert d["spec"]["headGroupSpec"]["serviceType"] == "ClusterIP"
        for c in _pod_specs(d):
            assert not any("hostPort" in p for p in c.get("ports", [])), c["name"]
    policies = [d for _, d in docs if d["kind"] == "NetworkPolicy"]
    protected = {tuple(sorted(p["spec"]["podSelector"]["matchLabels"].items())) for p in policies}
    assert (("ray.io/cluster", "bsm-ray"),) in protected
    assert (("app.kubernetes.io/name", "bsm-ray-mlflow"),) in protected
    for p in policies:
        for rule in p["spec"]["ingress"]:
            assert not any("ipBlock" in f for f in rule["from"])  # no CIDR-based openings
    # the Ray token comes from a Secret by reference in every Ray container
    for _, d in docs:
        if d["kind"] in ("RayCluster", "RayJob"):
            for c in _pod_specs(d):
                env = {e["name"]: e for e in c["env"]}
                assert env["RAY_AUTH_MODE"]["value"] == "token"
                assert "secretKeyRef" in env["RAY_AUTH_TOKEN"]["valueFrom"]


SECRET_PATTERNS = [
    r"AKIA[0-9A-Z]{16}",  # AWS access key id
    r"(?i)aws_secret_access_key\s*[:=]",
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
    r"(?i)\bpassword\s*[:=]\s*\S+",
    r"(?i)\b(token|secret)\s*:\s*['\"]?[A-Za-z0-9+/_-]{20,}",
    r"\"private_key\"",
]


@pytest.mark.parametrize("path", sorted(p for p in CLUSTER.rglob("*") if p.is_file()),
                         ids=lambda p: str(p.relative_to(CLUSTER)))  # fmt: skip
def test_no_credentials_in_cluster_files(path):
    text = path.read_text()
    for pattern in SECRET_PATTERNS:
        assert not re.search(pattern, text), (path.name, pattern)


def test_round_configs_are_elastic_within_what_the_clusters_hold():
    """The paper rounds run `num_workers: [min, max]`, one worker per GPU: the 8-GPU node types
    hold exactly max (on demand + spot), the on-demand nodes alone hold min (a spot reclaim
    never takes a round below it), KubeRay's 8-GPU group holds max, and every size the rounds
    take is a whole number of 8-GPU nodes."""
    from bsm_ray.config import load_config
    from bsm_ray.train.config import TrainConfig

    configs = CLUSTER.parent / "jobs" / "configs"
    rounds = [load_config(TrainConfig, configs / f"bsm_round{n}.yaml") for n in (1, 2, 3)]
    ranges = {r.worker_range for r in rounds}
    assert len(ranges) == 1
    (low, high), = ranges
    assert low < high
    for r in rounds:
        sizes = r.check_world_sizes()
        assert sizes[0] == low and sizes[-1] == high and all(n % 8 == 0 for n in sizes)
    for path in LAUNCHER_CONFIGS:
        types = _load(path)["available_node_types"]
        assert types["gpu-8xh100-ondemand"]["max_workers"] * 8 == low, path.name
        assert (types["gpu-8xh100-ondemand"]["max_workers"]
                + types["gpu-8xh100-spot"]["max_workers"]) * 8 == high, path.name
    rc = next(d for _, d in _kube_docs() if d["kind"] == "RayCluster")
    group = next(g for g in rc["spec"]["workerGroupSpecs"] if g["groupName"] == "gpu-8xh100")
    assert group["maxReplicas"] * 8 == high
