"""Round checkpoints as registered models, and promotion gated on evaluation.

One real 2-worker DeepSpeed run (Ray Train) tracks into a real `mlflow server` that is stopped
mid-run and started again; the run finishes, reports the gap, and its final model is registered
with lineage. Promotion then moves `champion` for a better version and not for a worse one.
"""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from bsm_ray.cli import run_job
from bsm_ray.eval.perplexity import PerplexityConfig, metrics_from_sums
from bsm_ray.eval.promotion import Gate, PromoteConfig, decide, promote
from bsm_ray.tracking.config import TrackingConfig
from bsm_ray.tracking.registry import registered_name, resolve_version, version_tags
from bsm_ray.tracking.runs import client, download_model
from bsm_ray.train.config import DataConfig, MaskingConfig, TrainConfig
from bsm_ray.train.context import read_metrics
from bsm_ray.train.launcher import launch
from bsm_ray.train.schedules import ScheduleConfig

# ----------------------------------------------------------------------------- pure parts


def test_metrics_from_sums_by_hand():
    ln2 = math.log(2)
    m = metrics_from_sums({"single_dna": (2 * ln2 * 10, 10), "refseq_pair": (ln2 * 30, 30),
                           "gene_pair": (3 * ln2 * 10, 10)})  # fmt: skip
    assert m["eval/bits_per_token/single_dna"] == pytest.approx(2.0)
    assert m["eval/ppl/single_dna"] == pytest.approx(4.0)
    assert m["eval/ppl/dna"] == pytest.approx(4.0)  # the only DNA source
    # pairs = refseq + gene, token-weighted: (30*1 + 10*3) / 40 = 1.5 bits
    assert m["eval/bits_per_token/pairs"] == pytest.approx(1.5)
    assert m["eval/ppl/pairs"] == pytest.approx(2**1.5)
    # all: (20 + 30 + 30) / 50 = 1.6 bits
    assert m["eval/bits_per_token"] == pytest.approx(1.6)
    assert m["eval/tokens/refseq_pair"] == 30


def test_decision_gates():
    cfg = PromoteConfig(guardrails=[Gate("eval/ppl/dna", 0.02), Gate("eval/ppl/protein", 0.0)])
    champ = {"eval/ppl": 10.0, "eval/ppl/dna": 5.0, "eval/ppl/protein": 20.0}
    better = {"eval/ppl": 9.0, "eval/ppl/dna": 5.09, "eval/ppl/protein": 20.0}
    rows, ok, why = decide(cfg, better, champ)
    assert ok and all(r.passed for r in rows), why
    # a guardrail worse than tolerated blocks a better primary, and the reason names it
    worse_dna = {**better, "eval/ppl/dna": 5.2}
    rows, ok, why = decide(cfg, worse_dna, champ)
    assert not ok and "eval/ppl/dna worse than tolerated" in why
    # a tie on the primary is not an improvement; min_improvement is relative
    assert not decide(cfg, {**better, "eval/ppl": 10.0}, champ)[1]
    cfg.min_improvement = 0.2
    rows, ok, why = decide(cfg, better, champ)
    assert not ok and "by less than required" in why
    # no champion: judged alone; a missing primary metric is a config error
    assert decide(cfg, better, None)[1]
    with pytest.raises(Exception, match="primary metric"):
        decide(PromoteConfig(primary="eval/ppl/rna"), better, champ)
    # default guardrails: every per-modality perplexity the champion has
    rows, ok, _ = decide(PromoteConfig(), better, champ)
    assert [r.metric for r in rows] == ["eval/ppl", "eval/ppl/dna", "eval/ppl/protein"]


def test_registered_names():
    assert registered_name("bsm-110m") == registered_name("bsm-270m") == "bsm-causal"
    assert registered_name("dnabert-6") == "dnabert" and registered_name("logo") == "logo"
    assert registered_name("bert-tiny") == "bert-tiny"
    assert registered_name("bsm-110m", "mine") == "mine"


# ----------------------------------------------------------------------------- the real run


def _job(name: str):
    """A job script loaded as a module (its main() runs in this process)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "jobs" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"job_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _logits(model_dir, ids, mask):
    from bsm_ray.train.export import load_hf, probe_logits

    return probe_logits(load_hf(model_dir), ids, mask)


def test_tracked_run_survives_outage_registers_and_promotes(dataset, server, ray_instance,
                                                             tmp_path, capsys):  # fmt: skip
    import torch

    from bsm_ray.data.windows import mlm_windows
    from bsm_ray.models import build_model, get_preset
    from bsm_ray.train.export import export_checkpoint, save_hf

    register_job = _job("register_model")

    uri = server.uri
    tracking = TrackingConfig(uri=uri, experiment="registry", flush_every_s=0.0)
    evalcfg = PerplexityConfig(dataset=dataset, rows_per_source=24)

    # version 1: freshly initialised weights, registered on demand through the job, promoted
    init = save_hf(build_model(get_preset("bert-tiny"), seed=7), "bert-tiny", tmp_path / "init")
    assert run_job(register_job.main, register_job.RegisterConfig, "register", argv=[
        "--set", f"path={init}", "--set", "name=bert-tiny", "--set", f"tracking.uri={uri}",
        "--set", "tracking.experiment=registry"]) == 0  # fmt: skip
    first = promote(PromoteConfig(model_name="bert-tiny", candidate="1", eval=evalcfg,
                                  tracking=TrackingConfig(uri=uri, experiment="eval")))
    assert first.promote and resolve_version(tracking, "bert-tiny", "champion") == "1"

    # a 2-worker CM-GEMS run from version 1's weights; the server dies at step 4
    config = TrainConfig(
        name="enc", model="bert-tiny", objective="mlm", global_batch_tokens=16 * 512,
        micro_batch_rows=4, max_steps=16, init_from=str(init),
        schedule=ScheduleConfig(kind="warmup_linear", start_lr=1e-2, end_lr=1e-3, warmup_steps=2),
        data=DataConfig(dataset=dataset, val_rows_per_source=24),
        masking=MaskingConfig(strategy="cm_gems", switch_threshold=1e9),
        num_workers=2, zero_stage=2, eval_every=4, checkpoint_every=4,
        storage_path=str(tmp_path / "runs"), trace=True, tracking=tracking,
    )  # fmt: skip
    trace = tmp_path / "runs" / "enc" / "trace" / "rank0.jsonl"
    outage: dict[str, float] = {}

    def last_step() -> int:
        if not trace.is_file():
            return 0
        lines = trace.read_text().splitlines()
        return json.loads(lines[-1])["step"] if lines else 0

    def stop_then_restart() -> None:
        deadline = time.time() + 600
        while last_step() < 4 and time.time() < deadline:
            time.sleep(0.05)
        outage["stopped_at_step"] = last_step()
        server.stop()
        while last_step() < 7 and time.time() < deadline:  # failed sends while it is down
            time.sleep(0.05)
        outage["down_until_step"] = last_step()
        server.start()

    watcher = threading.Thread(target=stop_then_restart, daemon=True)
    watcher.start()
    result = launch(config)
    watcher.join(timeout=120)
    assert outage.get("stopped_at_step", 99) < 16, outage
    out = capsys.readouterr().out
    assert result.metrics["step"] == 16

    # the run: complete metric history despite the outage, the gap recorded and printed
    c = client(uri)
    run_id = result.tracking["run_id"]
    run = c.get_run(run_id)
    assert run.info.status == "FINISHED"
    steps = sorted(m.step for m in c.get_metric_history(run_id, "train/loss"))
    assert steps == list(range(1, 17))
    gaps = json.loads(run.data.tags["bsm_ray.logging_gaps"])
    assert gaps and gaps[0]["seconds"] > 0 and gaps[0]["failed_attempts"] >= 1
    assert result.tracking["logging_gaps"] == gaps and "MLflow logging gaps" in out
    # params are the flattened config; lineage tags
    assert run.data.params["masking.strategy"] == "cm_gems"
    assert run.data.params["num_workers"] == "2"
    tags = run.data.tags
    manifest = json.loads((Path(dataset) / "manifest.json").read_text())
    assert tags["bsm_ray.data_manifest_sha256"] == manifest["dataset_sha256"]
    assert tags["bsm_ray.tokenizer_sha256"] == manifest["tokenizers"]["kmer-6"]
    assert tags["bsm_ray.masking_strategy"] == "cm_gems"
    switch = [m for m in read_metrics(result.run_dir) if "mask/switch_step" in m]
    assert len(switch) == 1 and tags["bsm_ray.switch_step"] == str(switch[0]["step"]) == "8"
    assert len(tags["bsm_ray.git_commit"].split("+")[0]) == 40
    # artifacts: the config, the NPMI table, the loss plot, the metrics, the model
    names = {a.path for a in c.list_artifacts(run_id)}
    assert {"config.yaml", "npmi", "plots", "metrics.jsonl", "model"} <= names
    assert [a.path for a in c.list_artifacts(run_id, "npmi")][0].endswith(".parquet")
    assert [a.path for a in c.list_artifacts(run_id, "plots")] == ["plots/loss.png"]
    model_files = {Path(a.path).name for a in c.list_artifacts(run_id, "model")}
    assert {"config.json", "model.safetensors", "tokenizer_config.json"} <= model_files
    # the loss fell
    history = read_metrics(result.run_dir)
    initial = next(m for m in history if m["step"] == 0)["val/loss"]
    assert result.metrics["val/loss"] < initial - 0.02

    # version 2: the run's export, with lineage back to version 1 (found by weights' content)
    assert result.tracking["registered"] == "models:/bert-tiny/2"
    vt = version_tags(tracking, "bert-tiny", "2")
    assert vt["bsm_ray.run_id"] == run_id and vt["bsm_ray.parent_version"] == "bert-tiny/1"
    # the mix it trained on (MLM: the genome pieces), not the causal default of data.mix
    assert vt["bsm_ray.mix"] == json.dumps({"genome": 1.0})
    assert vt["bsm_ray.masking_strategy"] == "cm_gems"

    # the export gives the training model's logits: checked in the worker against the live
    # model, and here against the weights rebuilt from the DeepSpeed ZeRO checkpoint
    metric = c.get_metric_history(run_id, "export/max_abs_logit_diff")
    assert metric and metric[0].value <= 1e-5
    registered = download_model(tracking, "models:/bert-tiny/2", tmp_path / "dl")
    rebuilt = export_checkpoint(result.checkpoint, tmp_path / "rebuilt")
    val = mlm_windows(dataset, "val")
    ids = torch.from_numpy(val.input_ids[:4].astype(np.int64))
    mask = torch.from_numpy(val.attention_mask[:4].astype(np.int64))
    reg_logits = _logits(registered, ids, mask)
    assert torch.equal(reg_logits, _logits(result.final_model, ids, mask))
    assert float((reg_logits - _logits(rebuilt, ids, mask)).abs().max()) <= 1e-5
    assert not torch.equal(reg_logits, _logits(init, ids, mask))  # training changed it

    # promotion: the dry run changes nothing; the trained version beats the champion
    capsys.readouterr()
    dry = promote(PromoteConfig(model_name="bert-tiny", eval=evalcfg, dry_run=True,
                                tracking=TrackingConfig(uri=uri, experiment="eval")))
    assert dry.promote and "dry run: nothing changed" in capsys.readouterr().out
    assert resolve_version(tracking, "bert-tiny", "champion") == "1"
    better = promote(PromoteConfig(model_name="bert-tiny", eval=evalcfg,
                                   tracking=TrackingConfig(uri=uri, experiment="eval")))
    assert better.promote and better.candidate == "2" and better.champion == "1"
    assert resolve_version(tracking, "bert-tiny", "champion") == "2"
    vt = version_tags(tracking, "bert-tiny", "2")
    assert vt["bsm_ray.eval_run_id"] == better.eval_run_ids["2"]
    assert vt["bsm_ray.promotion"].startswith("promoted against 1")
    eval_run = c.get_run(better.eval_run_ids["2"])
    assert eval_run.data.metrics["eval/ppl"] == pytest.approx(better.rows[0].candidate)
    assert {a.path for a in c.list_artifacts(eval_run.info.run_id)} >= {"decision.txt",
                                                                       "decision.json"}
    # ... and the worse one does not, and the table says why
    capsys.readouterr()
    worse = promote(PromoteConfig(model_name="bert-tiny", candidate="1", eval=evalcfg,
                                  tracking=TrackingConfig(uri=uri, experiment="eval")))
    table = capsys.readouterr().out
    assert not worse.promote and resolve_version(tracking, "bert-tiny", "champion") == "2"
    assert "eval/ppl not better" in worse.reason
    assert "FAIL" in table and "KEEP" in table and "stays -> version 2" in table
    assert np.isfinite(worse.rows[0].candidate) and worse.rows[0].candidate > worse.rows[0].champion
    assert version_tags(tracking, "bert-tiny", "1")["bsm_ray.promotion"].startswith("rejected")
