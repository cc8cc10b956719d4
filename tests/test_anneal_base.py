"""Where a sweep's base weights come from: model folders, run folders, registry URIs."""

from __future__ import annotations

import json

import pytest

from bsm_ray.config import from_dict
from bsm_ray.errors import ConfigError
from bsm_ray.tune.config import AnnealConfig
from bsm_ray.tune.sweep import resolve_base


def _model_dir(path):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (path / "model.safetensors").write_bytes(b"\0" * 16)
    return path


def test_base_from_model_folder_checkpoint_and_run_folder(tmp_path):
    model = _model_dir(tmp_path / "run" / "checkpoint_2026" / "final_model")
    for given in (model, model.parent, tmp_path / "run"):
        config = from_dict(AnnealConfig, {"base": {"path": str(given)}})
        assert resolve_base(config, tmp_path / "sweep") == model
    config = from_dict(AnnealConfig, {"base": {"path": str(tmp_path)}})
    with pytest.raises(ConfigError, match="no model there"):
        resolve_base(config, tmp_path / "sweep")


def test_base_from_a_registry_uri(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    model = _model_dir(tmp_path / "exported" / "final_model")
    client = MlflowClient(uri)
    client.create_registered_model("bsm-causal")
    version = client.create_model_version("bsm-causal", source=str(model))
    client.set_registered_model_alias("bsm-causal", "champion", version.version)
    for ref in (f"models:/bsm-causal/{version.version}", "models:/bsm-causal@champion"):
        config = from_dict(AnnealConfig, {"base": {"path": ref}, "tracking": {"uri": uri}})
        got = resolve_base(config, tmp_path / "sweep")
        assert (got / "config.json").read_text() == (model / "config.json").read_text()
    config = from_dict(AnnealConfig, {"base": {"path": "models:/missing/1"},
                                      "tracking": {"uri": uri}})  # fmt: skip
    with pytest.raises(ConfigError, match="cannot fetch it from the registry"):
        resolve_base(config, tmp_path / "sweep2")


def test_base_with_optimizer_state_is_the_checkpoint_unless_told_otherwise(tmp_path, capsys):
    """A training checkpoint (DeepSpeed state + trainer state) is what trials start from by
    default, so they get its AdamW moments; `base.optimizer_state: false` takes its weights
    only, and `true` without a checkpoint is an error."""
    run = tmp_path / "round1"
    old, new = run / "checkpoint_2026-01", run / "checkpoint_2026-02"
    for step, ckpt in ((10, old), (20, new)):
        _model_dir(ckpt / "final_model")
        (ckpt / "state").mkdir()
        (ckpt / "trainer_state.json").write_text(json.dumps({"step": step}))
    for given in (run, new, new / "final_model"):
        config = from_dict(AnnealConfig, {"base": {"path": str(given)}})
        assert resolve_base(config, tmp_path / "sweep") == new
    assert f"trials start from {new} (step 20) with its optimizer state" in capsys.readouterr().out
    config = from_dict(AnnealConfig, {"base": {"path": str(run), "optimizer_state": False}})
    assert resolve_base(config, tmp_path / "sweep") == new / "final_model"
    assert "fresh AdamW moments (base.optimizer_state: false)" in capsys.readouterr().out
    model = _model_dir(tmp_path / "exported")
    config = from_dict(AnnealConfig, {"base": {"path": str(model), "optimizer_state": True}})
    with pytest.raises(ConfigError, match="holds no training checkpoint"):
        resolve_base(config, tmp_path / "sweep")
    config = from_dict(AnnealConfig, {"base": {"path": str(model)}})
    assert resolve_base(config, tmp_path / "sweep") == model
    assert "the base has no optimizer state" in capsys.readouterr().out
