"""What turns rows into tensors: masking for a step, in-memory windows to rows, rows to
device tensors, labels, target counting and the per-token loss sum.

Shared by the training loop (`loop.py`), the streaming workers (`streaming.py`), the tracked
driver (`tracked.py`), the benchmarks and tests, so none of them imports the loop for these.
Design choices:
- masks are a pure function of (seed, row id, step, strategy) (`bsm_ray.data.masking`), so a
  restart, another world size or another micro-batch size masks a row the same way;
- validation masks a fixed strategy at `VAL_MASK_STEP`, whatever the curriculum's phase;
- the loss is a *sum* over target tokens (`token_loss_sum`); the caller divides by the global
  target count (`num_targets` summed over ranks), so the gradient does not depend on how rows
  are grouped into micro-batches and workers.

Imports numpy; torch only inside the functions that make tensors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bsm_ray.train.config import TrainConfig

VAL_MASK_STEP = 0
"""Validation masks are drawn for this step, so every evaluation (of every run) sees the same."""


class Masker:
    """MLM masking of a batch for a step, following the configured strategy or curriculum."""

    def __init__(self, config: TrainConfig) -> None:
        from bsm_ray.data.curriculum import CmGemsSchedule, CmStepSchedule

        self.config = config
        strategy = config.masking.strategy
        self.rank_table = None
        if strategy != "dnabert" or config.masking.eval_strategy != "dnabert":
            self.rank_table = pmi_rank_table(config.masking.pmi_table)
        self.schedule = None
        if strategy == "cm_step":
            self.schedule = CmStepSchedule(max_steps=config.max_steps, seed=config.seed)
        elif strategy == "cm_gems":
            self.schedule = CmGemsSchedule(threshold=config.masking.switch_threshold,
                                           rule=config.masking.switch_rule)  # fmt: skip

    def strategy(self, step: int) -> str:
        return self.schedule.strategy(step) if self.schedule else self.config.masking.strategy

    def __call__(self, ids: np.ndarray, mask: np.ndarray, row_ids: np.ndarray, step: int,
                 strategy: str | None = None):  # fmt: skip
        """Masks for `step` with the curriculum's strategy, or with `strategy` when given
        (validation: a fixed strategy at a fixed step)."""
        from bsm_ray.data.masking import apply_mask

        return apply_mask(strategy or self.strategy(step), ids, mask, self.config.seed, row_ids,
                          step, self.rank_table)  # fmt: skip


def resolve_pmi_table(path: str | None) -> str:
    """The NPMI table's path; None means the sample corpus's table, built once and cached."""
    if path is not None:
        return path
    from bsm_ray.data.pmi_build import PmiConfig, build_pmi_table
    from bsm_ray.ingest.samples import cache_dir

    path = str(cache_dir() / "npmi_6mer_sample.parquet")
    if not Path(path).is_file():
        build_pmi_table(PmiConfig(output=path, progress=False, parallel="local"))
    return path


def pmi_rank_table(path: str | None) -> np.ndarray:
    """The rank of every 6-mer id in the NPMI table at `path` (None: the sample's)."""
    from bsm_ray.data.pmi_build import load_rank_table

    return load_rank_table(resolve_pmi_table(path))


def batch_tensors(config, windows, rows, masker, step, device, strategy=None):
    """Tensors for one micro-batch of (source, row) pairs of in-memory windows."""
    rows_np = window_rows(config, windows, rows, masker, step, strategy)
    return rows_to_tensors(config, rows_np, device)


def window_rows(config, windows, rows, masker, step, strategy=None) -> dict[str, np.ndarray]:
    """(source, row) pairs of in-memory windows as numpy columns, MLM rows masked for `step`
    (with the curriculum's strategy, or `strategy` when given)."""
    out = {
        "input_ids": np.stack([windows[s].input_ids[r] for s, r in rows]),
        "attention_mask": np.stack([windows[s].attention_mask[r] for s, r in rows]),
        "row_id": np.array([windows[s].row_ids[r] for s, r in rows], dtype=np.int64),
        "source": np.array([s for s, _ in rows]),
    }
    if config.objective == "mlm":
        masked = masker(out["input_ids"], out["attention_mask"], out["row_id"], step, strategy)
        out["input_ids"], out["labels"] = masked.input_ids, masked.labels
    return out


def row_labels(config, rows: dict[str, np.ndarray]) -> np.ndarray:
    """Labels of numpy rows: MLM's masked positions, or the ids with -100 on padding (causal);
    rows that already carry "labels" keep them."""
    if config.objective == "mlm" or "labels" in rows:
        return rows["labels"]
    return np.where(rows["attention_mask"] > 0, rows["input_ids"], -100)


def rows_to_tensors(config, rows: dict[str, np.ndarray], device) -> dict:
    """Model inputs on `device` from numpy columns."""
    ids, mask, labels = rows["input_ids"], rows["attention_mask"], row_labels(config, rows)
    return {
        "input_ids": to_device(np.ascontiguousarray(ids), device),  # widened to int64 there
        "attention_mask": to_device(np.ascontiguousarray(mask), device),
        "labels": to_device(np.ascontiguousarray(labels), device),
    }


def to_device(array: np.ndarray, device):
    """A numpy batch as an int64 tensor on `device`. It travels in its own (narrower) type and
    is widened on the device; on CUDA through pinned memory, copied without blocking the host
    (the copy is ordered before the kernels that use it)."""
    import torch

    t = torch.from_numpy(array)
    if device.type == "cuda":
        t = t.pin_memory().to(device, non_blocking=True)
    else:
        t = t.to(device)
    return t.long()


def num_targets(batch, objective: str) -> int:
    """Positions that carry a loss: shifted labels (causal LM) or masked positions (MLM), of a
    batch of tensors or of numpy columns with "labels"."""
    labels = batch["labels"]
    if objective == "causal":
        return int((labels[:, 1:] != -100).sum())
    return int((labels != -100).sum())


def token_loss_sum(model, batch, objective: str):
    """The sum of per-token cross-entropies over the batch's targets (a 0-d fp32 tensor).

    Computed from the logits, not from the model's mean loss: a sum divided by the *global*
    target count is what makes a step's gradient independent of how its rows are split into
    micro-batches and workers, and a micro-batch without targets gives 0, not 0/0. Causal LM:
    logits at t predict the token at t + 1 (transformers' shift); padding labels are -100."""
    import torch.nn.functional as F

    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"]
    if objective == "causal":
        logits, labels = logits[:, :-1], labels[:, 1:]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                           ignore_index=-100, reduction="sum")  # fmt: skip
