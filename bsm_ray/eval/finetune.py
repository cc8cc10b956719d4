"""Fine-tuning heads on GUE-style CSVs, with Ray Train (or in this process).

Input: CSV files with a header, `sequence,label` (GUE), or `sequence_a,sequence_b,label` for
pair tasks (the two sequences joined by `<sep>` as in BSM's pair data). Labels are class ids
0..n-1 (classification) or numbers (regression).

Model: the exported base model (Hugging Face format) under
`AutoModelForSequenceClassification`: transformers' Llama head for BSM (the last real token's
state), BERT's pooled [CLS] head for DNABERT / LOGO; the head is new, the body is the base.
BSM inputs are tagged char documents (`<dna>...`, `modality_a` / `modality_b`); DNABERT / LOGO
inputs are `[CLS] 6-mers [SEP]` rows (single sequences only).

Training: AdamW, `epochs` passes over the train rows in a seeded order; with `num_workers > 0`
a Ray Train `TorchTrainer` of that many workers, the model wrapped by `prepare_model` (DDP over
gloo / NCCL), each worker taking every `world_size`-th row; rank 0 evaluates. Metrics:
accuracy and MCC (classification), Spearman (regression), on validation and test.

Few-shot protocol (CM-GEMS): `shots_per_class: n` trains on n rows of each class drawn with
each of `seeds`, and the result is the mean and standard deviation over the seeds.

Imports torch lazily, ray only with workers.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bsm_ray.errors import InputError
from bsm_ray.eval.metrics import accuracy, mcc, spearman


@dataclass
class FinetuneConfig:
    """One fine-tuning task: data, head, optimisation, workers, few-shot protocol."""

    model: str = ""
    """Directory of the exported base model (a run's final_model/)."""
    train_csv: str = ""
    val_csv: str = ""
    test_csv: str = ""
    task: str = "classification"
    """classification or regression."""
    modality_a: str = "dna"
    modality_b: str = "protein"
    max_len: int = 512
    epochs: int = 3
    lr: float = 1e-3
    batch_size: int = 16
    seed: int = 0
    num_workers: int = 0
    """0: in this process; N: a Ray Train TorchTrainer with N workers."""
    storage_path: str = "runs"
    """Where Ray Train keeps its run folders (with workers)."""
    shots_per_class: int | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    """Few-shot repeats: one fine-tuning per seed (mean and std reported)."""

    def __post_init__(self) -> None:
        if self.task not in ("classification", "regression"):
            raise ValueError(f"task must be classification or regression, got {self.task!r}")


def read_labelled_csv(path: str, task: str) -> tuple[list[tuple[str, ...]], np.ndarray]:
    """(sequences per row: 1 or 2, labels) of a GUE-style CSV; bad rows are InputErrors."""
    rows, labels = [], []
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        names = reader.fieldnames or []
        cols = (["sequence"] if "sequence" in names
                else ["sequence_a", "sequence_b"] if {"sequence_a", "sequence_b"} <= set(names)
                else None)  # fmt: skip
        if cols is None or "label" not in names:
            need = "sequence,label or sequence_a,sequence_b,label"
            raise InputError(path, None, "missing_column", f"need {need}; has {names}")
        for i, row in enumerate(reader, start=2):
            try:
                y = float(row["label"]) if task == "regression" else int(row["label"])
            except (TypeError, ValueError):
                raise InputError(path, f"line {i}", "bad_label", repr(row["label"])) from None
            if task == "classification" and y < 0:
                raise InputError(path, f"line {i}", "bad_label", f"{y} < 0")
            seqs = tuple(row[c].strip().upper() for c in cols)
            if not all(seqs):
                raise InputError(path, f"line {i}", "empty_sequence")
            rows.append(seqs)
            labels.append(y)
    if not rows:
        raise InputError(path, None, "no_rows")
    return rows, np.array(labels, dtype=np.float32 if task == "regression" else np.int64)


def encode(rows: list[tuple[str, ...]], model_type: str, cfg: FinetuneConfig):
    """Right-padded (input_ids, attention_mask) int64 arrays for the model's tokenizer."""
    if model_type == "bert":
        from bsm_ray.tokenizers import KmerTokenizer

        if any(len(r) != 1 for r in rows):
            raise InputError(cfg.train_csv, None, "pairs_need_bsm",
                             "DNABERT / LOGO heads take single sequences")  # fmt: skip
        enc = KmerTokenizer(6, max_len=cfg.max_len).encode_batch([r[0] for r in rows])
        return enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)
    from bsm_ray.tokenizers.char import BsmCharTokenizer, format_document

    tok = BsmCharTokenizer()
    mods = (cfg.modality_a, cfg.modality_b)
    docs = [tok.encode(format_document(list(zip(mods, r, strict=False))))[: cfg.max_len]
            for r in rows]  # fmt: skip
    width = max(len(d) for d in docs)
    ids = np.zeros((len(docs), width), dtype=np.int64)
    mask = np.zeros((len(docs), width), dtype=np.int64)
    for i, d in enumerate(docs):
        ids[i, : len(d)], mask[i, : len(d)] = d, 1
    return ids, mask


def few_shot_indices(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n rows of every class, drawn with `seed` (an error if a class has fewer)."""
    rng = np.random.default_rng(seed)
    out = []
    for c in np.unique(labels):
        pool = np.flatnonzero(labels == c)
        if len(pool) < n:
            raise ValueError(f"class {c} has {len(pool)} rows, fewer than shots_per_class={n}")
        out.append(rng.choice(pool, size=n, replace=False))
    return np.sort(np.concatenate(out))


def _metrics(prefix: str, task: str, y: np.ndarray, out: np.ndarray) -> dict[str, float]:
    if task == "regression":
        return {f"{prefix}/spearman": spearman(out[:, 0], y)}
    pred = out.argmax(axis=1)
    return {f"{prefix}/accuracy": accuracy(y, pred), f"{prefix}/mcc": mcc(y, pred)}


def _predict(model, ids, mask, batch_size, device) -> np.ndarray:
    import torch

    outs = []
    model.eval()
    with torch.no_grad():
        for i in range(0, len(ids), batch_size):
            outs.append(model(input_ids=torch.from_numpy(ids[i : i + batch_size]).to(device),
                              attention_mask=torch.from_numpy(mask[i : i + batch_size]).to(device)
                              ).logits.float().cpu().numpy())  # fmt: skip
    return np.concatenate(outs)


def train_head(cfg_dict: dict[str, Any]) -> dict[str, float]:
    """The training function: in this process, or inside every Ray Train worker."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from bsm_ray.config import from_dict

    cfg = from_dict(FinetuneConfig, {k: v for k, v in cfg_dict.items() if k != "_train_rows"})
    rank, world, device, ray_train = 0, 1, torch.device("cpu"), None
    if cfg.num_workers > 0:
        import ray.train
        import ray.train.torch

        ray_train = ray.train
        context = ray.train.get_context()
        rank, world = context.get_world_rank(), context.get_world_size()
        device = ray.train.torch.get_device()
    torch.manual_seed(cfg.seed)
    base = AutoConfig.from_pretrained(cfg.model)
    data = {s: read_labelled_csv(getattr(cfg, f"{s}_csv"), cfg.task)
            for s in ("train", "val", "test") if getattr(cfg, f"{s}_csv")}  # fmt: skip
    train_rows, train_y = data["train"]
    if cfg_dict.get("_train_rows") is not None:
        keep = np.asarray(cfg_dict["_train_rows"])
        train_rows, train_y = [train_rows[i] for i in keep], train_y[keep]
    num_labels = 1 if cfg.task == "regression" else 1 + int(max(d[1].max() for d in data.values()))
    model = AutoModelForSequenceClassification.from_pretrained(
        cfg.model, num_labels=num_labels,
        problem_type="regression" if cfg.task == "regression" else "single_label_classification",
    ).to(device)  # fmt: skip
    if ray_train is not None:
        model = ray.train.torch.prepare_model(model)
    ids, mask = encode(train_rows, base.model_type, cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    rng = np.random.default_rng(cfg.seed)
    for _epoch in range(cfg.epochs):
        model.train()
        order = rng.permutation(len(ids))[rank::world]  # the same permutation on every rank
        per_rank = math.ceil(len(ids) / world)
        steps = math.ceil(per_rank / cfg.batch_size)
        for s in range(steps):  # every rank takes the same number of steps (DDP)
            b = order[s * cfg.batch_size : (s + 1) * cfg.batch_size]
            if len(b) == 0:
                b = order[:1]
            out = model(input_ids=torch.from_numpy(ids[b]).to(device),
                        attention_mask=torch.from_numpy(mask[b]).to(device),
                        labels=torch.from_numpy(train_y[b]).to(device))  # fmt: skip
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            optimizer.step()
    metrics: dict[str, float] = {"train/rows": float(len(ids))}
    net = model.module if hasattr(model, "module") else model
    if rank == 0:
        for split in ("val", "test"):
            if split in data:
                rows, y = data[split]
                e_ids, e_mask = encode(rows, base.model_type, cfg)
                out = _predict(net, e_ids, e_mask, cfg.batch_size, device)
                metrics.update(_metrics(split, cfg.task, y, out))
    if ray_train is not None:
        # Ray Train V2 keeps the metrics of reports that carry a checkpoint: rank 0 attaches
        # one holding the metrics as JSON (no model: the head is for scoring, not reuse).
        import json
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                (Path(tmp) / "metrics.json").write_text(json.dumps(metrics))
                checkpoint = ray_train.Checkpoint.from_directory(tmp)
            ray_train.report(metrics, checkpoint=checkpoint)
    return metrics


def finetune_once(cfg: FinetuneConfig, train_rows: list[int] | None = None) -> dict[str, float]:
    """One fine-tuning (all train rows, or the given ones)."""
    from bsm_ray.config import to_dict

    cfg_dict = {**to_dict(cfg), "_train_rows": train_rows}
    if cfg.num_workers == 0:
        return train_head(cfg_dict)
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from bsm_ray.train.launcher import connect_ray

    connect_ray()
    result = TorchTrainer(
        train_head, train_loop_config=cfg_dict,
        scaling_config=ScalingConfig(num_workers=cfg.num_workers),
        run_config=RunConfig(name=f"finetune-{Path(cfg.train_csv).stem}-seed{cfg.seed}",
                             storage_path=str(Path(cfg.storage_path).resolve())),
    ).fit()  # fmt: skip
    if result.error is not None:
        raise result.error
    return dict(result.metrics)


def finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Full-data fine-tuning, or the few-shot protocol over `seeds`: per-seed metrics and
    their mean and standard deviation."""
    runs = []
    for seed in cfg.seeds:
        rows = None
        if cfg.shots_per_class is not None:
            _, y = read_labelled_csv(cfg.train_csv, cfg.task)
            rows = few_shot_indices(y, cfg.shots_per_class, seed).tolist()
        one = FinetuneConfig(**{**cfg.__dict__, "seed": seed})
        runs.append(finetune_once(one, rows))
    keys = sorted({k for r in runs for k in r if k.startswith(("val/", "test/"))})
    summary = {k: {"mean": float(np.mean([r[k] for r in runs])),
                   "std": float(np.std([r[k] for r in runs]))} for k in keys}  # fmt: skip
    return {"runs": runs, "summary": summary, "seeds": list(cfg.seeds)}
