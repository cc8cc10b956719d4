"""Lineage tags of a training run: code, data, tokenizer, mix, masking. Pure module."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from bsm_ray.tracking.config import PROJECT_ROOT


def git_commit(root: Path = PROJECT_ROOT) -> str:
    """The checkout's commit (with '+dirty' when it has changes), or 'unknown' outside git."""
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], check=True,
                                capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                "--untracked-files=no"], check=True, capture_output=True,
                               text=True, timeout=10).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def run_tags(config: Any) -> dict[str, str]:
    """Tags for a TrainConfig's run (values as strings)."""
    tags = {
        "bsm_ray.git_commit": git_commit(),
        "bsm_ray.model": config.model,
        "bsm_ray.objective": config.objective,
        "bsm_ray.mix": json.dumps(config.trained_mix, sort_keys=True),  # what it trained on
    }
    if config.objective == "mlm":
        tags["bsm_ray.masking_strategy"] = config.masking.strategy
        tags["bsm_ray.eval_masks"] = config.masking.eval_strategy
        if config.masking.strategy == "cm_gems":
            tags["bsm_ray.switch_rule"] = config.masking.switch_rule
            tags["bsm_ray.switch_threshold"] = repr(float(config.masking.switch_threshold))
    manifest = Path(config.data.dataset) / "manifest.json"
    if manifest.is_file():
        data = json.loads(manifest.read_text())
        tags["bsm_ray.data_manifest_sha256"] = data.get("dataset_sha256", "")
        tokenizer = "bsm-char" if config.objective == "causal" else "kmer-6"
        if tokenizer in data.get("tokenizers", {}):
            tags["bsm_ray.tokenizer_sha256"] = str(data["tokenizers"][tokenizer])
    return tags
