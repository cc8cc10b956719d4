"""Perplexity per source and per modality on a prepared dataset's held-out split.

Causal models (BSM): each source's documents packed into `seq_len` windows exactly as in
training (`<eos>` between documents), loss over every real next-token target. Masked LMs
(DNABERT / LOGO): the genome pieces with fixed DNABERT span masks (seed 0, step 0), loss over
the masked positions, so two models are always scored on identical masks.

Metrics, token-weighted (bits = nats / ln 2):

    eval/loss/<source>, eval/bits_per_token/<source>, eval/ppl/<source>, eval/tokens/<source>
    eval/ppl/<modality>   dna, rna, protein, pairs (refseq_pair + gene_pair), interleaved (web),
                          genome (MLM)
    eval/loss, eval/bits_per_token, eval/ppl     over all sources

A source without the split (the sample has no RNA validation rows) is listed in `skipped`,
never silently left out. Imports torch and transformers lazily.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MODALITY = {"single_dna": "dna", "single_rna": "rna", "single_protein": "protein",
            "refseq_pair": "pairs", "gene_pair": "pairs", "web": "interleaved",
            "genome": "genome"}  # fmt: skip
CAUSAL_SOURCES = ("single_dna", "single_rna", "single_protein", "refseq_pair", "gene_pair", "web")


@dataclass
class PerplexityConfig:
    """Held-out perplexity of a model on a prepared dataset."""

    dataset: str = "data/sample"
    split: str = "val"
    sources: list[str] = field(default_factory=list)
    """Causal sources to score; empty: every source kind the dataset has."""
    rows_per_source: int = 64
    """At most this many windows per source (the first ones, as in training validation)."""
    seq_len: int = 256
    """Causal window length."""
    batch_rows: int = 8
    seed: int = 0
    """MLM mask seed (fixed: every model is scored on the same masks)."""


@dataclass
class PerplexityResult:
    metrics: dict[str, float]
    skipped: dict[str, str]


def _is_masked_lm(model) -> bool:
    return getattr(model.config, "model_type", "") == "bert"


def _windows(cfg: PerplexityConfig, masked: bool):
    from bsm_ray.data.windows import causal_windows, mlm_windows
    from bsm_ray.ingest.shards import read_manifest

    manifest = read_manifest(Path(cfg.dataset))
    skipped: dict[str, str] = {}
    out = {}
    sources = ["genome"] if masked else (list(cfg.sources) or
                                        [s for s in CAUSAL_SOURCES if s in manifest["shards"]])
    for source in sources:
        if not manifest["shards"].get(source, {}).get(cfg.split):
            skipped[source] = f"no {cfg.split} split in {cfg.dataset}"
            continue
        win = (mlm_windows(cfg.dataset, cfg.split) if masked
               else causal_windows(cfg.dataset, source, cfg.split, cfg.seq_len))
        out[source] = win
    return out, skipped


def evaluate_model(model, cfg: PerplexityConfig, device=None) -> PerplexityResult:
    """Token-weighted held-out loss of `model` (a transformers causal or masked LM)."""
    import torch

    from bsm_ray.data.masking import apply_mask

    device = device or torch.device("cpu")
    model = model.to(device).eval()
    masked = _is_masked_lm(model)
    windows, skipped = _windows(cfg, masked)
    sums: dict[str, tuple[float, int]] = {}
    with torch.no_grad():
        for source, win in windows.items():
            n = min(len(win), cfg.rows_per_source)
            total, count = 0.0, 0
            for i in range(0, n, cfg.batch_rows):
                ids = win.input_ids[i : i + cfg.batch_rows].astype(np.int64)
                mask = win.attention_mask[i : i + cfg.batch_rows].astype(np.int64)
                if masked:
                    m = apply_mask("dnabert", ids, mask, cfg.seed, win.row_ids[i : i + len(ids)], 0)
                    ids, labels = m.input_ids.astype(np.int64), m.labels.astype(np.int64)
                    targets = int((labels != -100).sum())
                else:
                    labels = np.where(mask > 0, ids, -100)
                    targets = int((labels[:, 1:] != -100).sum())
                if not targets:
                    continue
                out = model(input_ids=torch.from_numpy(ids).to(device),
                            attention_mask=torch.from_numpy(mask).to(device),
                            labels=torch.from_numpy(labels).to(device))  # fmt: skip
                total += float(out.loss) * targets
                count += targets
            if count:
                sums[source] = (total, count)
            else:
                skipped[source] = "no scored tokens"
    return PerplexityResult(metrics_from_sums(sums), skipped)


def metrics_from_sums(sums: dict[str, tuple[float, int]]) -> dict[str, float]:
    """Per-source, per-modality and overall metrics from (summed nats, tokens) per source."""
    metrics: dict[str, float] = {}

    def put(suffix: str, total: float, count: int) -> None:
        loss = total / count
        metrics[f"eval/loss{suffix}"] = loss
        metrics[f"eval/bits_per_token{suffix}"] = loss / math.log(2)
        metrics[f"eval/ppl{suffix}"] = math.exp(min(loss, 50.0))

    by_modality: dict[str, list[float]] = {}
    for source, (total, count) in sorted(sums.items()):
        put(f"/{source}", total, count)
        metrics[f"eval/tokens/{source}"] = float(count)
        agg = by_modality.setdefault(MODALITY.get(source, source), [0.0, 0])
        agg[0] += total
        agg[1] += count
    for modality, (total, count) in sorted(by_modality.items()):
        if f"eval/ppl/{modality}" not in metrics:
            put(f"/{modality}", total, count)
    if sums:
        put("", sum(t for t, _ in sums.values()), sum(c for _, c in sums.values()))
    return metrics


def evaluate_path(model_dir: str | Path, cfg: PerplexityConfig, device=None) -> PerplexityResult:
    from bsm_ray.train.export import load_hf

    return evaluate_model(load_hf(model_dir), cfg, device)

