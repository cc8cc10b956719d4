"""An evaluation suite on one model: perplexity per modality, few-shot Central Dogma, zero-shot
mutation fitness, fine-tuning heads. `jobs/evaluate.py` runs it.

The model is a directory (an exported `final_model/`, a run folder or a checkpoint: the newest
`final_model/` inside is used) or a registry URI (`models:/bsm-causal/3`,
`models:/bsm-causal@champion`), downloaded first. Each task is switched on by its section;
the tables are printed and written to `<output_dir>/<name>/` (`results.json`, `tables.txt`,
`central_dogma.png`), and, with tracking on, logged as one MLflow run in `bsm_ray-eval`:
flat metrics (`eval/ppl/dna`, `central_dogma/k0/win_rate`, `fitness/<assay>/spearman`,
`finetune/<task>/test/mcc/mean`, ...), the files as artifacts, the model URI as a tag.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bsm_ray.eval.central_dogma import CentralDogmaConfig, FewShotConfig
from bsm_ray.eval.finetune import FinetuneConfig
from bsm_ray.eval.fitness import FitnessConfig
from bsm_ray.eval.perplexity import PerplexityConfig
from bsm_ray.fileio import atomic_write_text
from bsm_ray.tracking.config import TrackingConfig


@dataclass
class PerplexitySection:
    enabled: bool = False
    config: PerplexityConfig = field(default_factory=PerplexityConfig)


@dataclass
class CentralDogmaSection:
    enabled: bool = False
    task: str = ""
    """A task table written by `write_task`; empty: built from `build.genbank`."""
    sample_record: str = ""
    """Build from this accession of the sample corpus's GenBank records (e.g. NC_000932,
    the chloroplast), fetched and cached like the sample; overrides `build.genbank`."""
    build: CentralDogmaConfig = field(default_factory=CentralDogmaConfig)
    few_shot: FewShotConfig = field(default_factory=FewShotConfig)


@dataclass
class NamedFitness:
    name: str = ""
    config: FitnessConfig = field(default_factory=FitnessConfig)


@dataclass
class NamedFinetune:
    name: str = ""
    config: FinetuneConfig = field(default_factory=FinetuneConfig)
    """`config.model` is filled with the suite's model."""


@dataclass
class EvaluateConfig:
    """What to evaluate, on which model, and where the results go."""

    model: str = ""
    name: str = ""
    """Name of the results folder and MLflow run; empty: from the model path or URI."""
    output_dir: str = "runs/eval"
    perplexity: PerplexitySection = field(default_factory=PerplexitySection)
    central_dogma: CentralDogmaSection = field(default_factory=CentralDogmaSection)
    fitness: list[NamedFitness] = field(default_factory=list)
    finetune: list[NamedFinetune] = field(default_factory=list)
    tracking: TrackingConfig = field(
        default_factory=lambda: TrackingConfig(experiment="bsm_ray-eval", register=False)
    )


def resolve_model(cfg: EvaluateConfig, workdir: Path) -> Path:
    """A local model directory for `cfg.model` (downloading a registry URI)."""
    from bsm_ray.errors import ConfigError
    from bsm_ray.train.export import find_model_dir

    if not cfg.model:
        raise ConfigError("model: give a model directory, run folder or models:/ URI")
    if cfg.model.startswith("models:/"):
        from bsm_ray.tracking.runs import download_model

        return download_model(cfg.tracking, cfg.model, workdir / "model")
    return find_model_dir(cfg.model)


def _default_name(model: str) -> str:
    text = model.removeprefix("models:/").rstrip("/")
    return "eval-" + "-".join(p for p in text.replace("@", "/").split("/")[-3:] if p)


def run_suite(cfg: EvaluateConfig) -> dict[str, Any]:
    """Run every enabled task; return {"metrics": flat, "tables": {task: text}, ...}."""
    from bsm_ray.train.export import load_hf

    name = cfg.name or _default_name(cfg.model)
    out = Path(cfg.output_dir) / name
    out.mkdir(parents=True, exist_ok=True)
    model_dir = resolve_model(cfg, out)
    model = load_hf(model_dir)
    metrics: dict[str, float] = {}
    tables: dict[str, str] = {}
    details: dict[str, Any] = {}
    plots: list[Path] = []
    if cfg.perplexity.enabled:
        from bsm_ray.eval.perplexity import evaluate_model

        result = evaluate_model(model, cfg.perplexity.config)
        metrics.update(result.metrics)
        details["perplexity_skipped"] = result.skipped
        tables["perplexity"] = "\n".join(f"{k:32s} {v:12.4f}"
                                         for k, v in sorted(result.metrics.items()))  # fmt: skip
    if cfg.central_dogma.enabled:
        from bsm_ray.eval import central_dogma as cd

        section = cfg.central_dogma
        if section.sample_record:
            section.build.genbank = cd.sample_genbank(section.sample_record)
        if section.task:
            rows, skipped = cd.read_task(section.task), {}
        else:
            rows, skipped = cd.build_task(section.build)
        results = cd.evaluate(model, rows, section.few_shot)
        details["central_dogma"] = {"per_k": results, "build_skipped": dict(skipped)}
        tables["central_dogma"] = cd.format_results(results)
        for r in results:
            for key, value in r.items():
                if key != "k" and isinstance(value, int | float):
                    metrics[f"central_dogma/k{r['k']}/{key}"] = float(value)
        plots.append(cd.plot_results(results, out / "central_dogma.png"))
    for item in cfg.fitness:
        from bsm_ray.eval.fitness import evaluate as fitness_eval

        r = fitness_eval(model, item.config)
        details[f"fitness/{item.name}"] = r
        metrics[f"fitness/{item.name}/spearman"] = r["spearman"]
        metrics[f"fitness/{item.name}/variants"] = float(r["variants"])
    if cfg.fitness:
        done = [(i.name, details[f"fitness/{i.name}"]) for i in cfg.fitness]
        tables["fitness"] = "\n".join(
            f"{name:24s} variants {r['variants']:6d}  Spearman {r['spearman']:.4f}  skipped "
            f"{r['skipped']}" for name, r in done)  # fmt: skip
    for item in cfg.finetune:
        from bsm_ray.eval.finetune import finetune

        item.config.model = str(model_dir)
        r = finetune(item.config)
        details[f"finetune/{item.name}"] = r
        for key, agg in r["summary"].items():
            metrics[f"finetune/{item.name}/{key}/mean"] = agg["mean"]
            metrics[f"finetune/{item.name}/{key}/std"] = agg["std"]
    if cfg.finetune:
        tables["finetune"] = "\n".join(
            f"{i.name:24s} " + "  ".join(f"{k} {a['mean']:.3f}±{a['std']:.3f}" for k, a in
                                         details[f"finetune/{i.name}"]["summary"].items())
            for i in cfg.finetune)  # fmt: skip
    report = {"model": cfg.model, "model_dir": str(model_dir), "metrics": metrics,
              "details": details}  # fmt: skip
    atomic_write_text(out / "results.json", json.dumps(report, indent=2, default=str))
    text = "\n\n".join(f"== {k} ==\n{v}" for k, v in tables.items())
    atomic_write_text(out / "tables.txt", text + "\n")
    report["tables"] = tables
    report["output_dir"] = str(out)
    if cfg.tracking.enabled:
        from bsm_ray.config import to_dict
        from bsm_ray.tracking.runs import log_finished_run

        report["run_id"] = log_finished_run(
            cfg.tracking, name, params=to_dict(cfg), tags={"bsm_ray.eval_model": cfg.model},
            metrics=metrics, files=[out / "results.json", out / "tables.txt", *plots],
        )  # fmt: skip
    return report
