"""Load a checkpoint at another world size: DeepSpeed's universal checkpoints, safely.

A DeepSpeed checkpoint holds the ZeRO optimizer partitions of the world size that wrote it
(`zero_pp_rank_<r>_mp_rank_00_optim_states.pt`, one per rank), and DeepSpeed refuses to load it
at another size. Its universal format holds each parameter's fp32 weights and Adam moments
whole (`zero/<param>/{fp32,exp_avg,exp_avg_sq}.pt`), which any world size and ZeRO stage can
partition again. `convert_to_universal` runs DeepSpeed's own converter
(`deepspeed.checkpoint.ds_to_universal`) in this process, without worker processes, and
`load_universal` loads the result into a running engine with
`checkpoint.load_universal` on; the step and the optimizer's moments carry over.

DeepSpeed's converter and its universal loader call `torch.load(weights_only=False)` (full
unpickling). Both run inside `safe_torch_load()`, which makes every `torch.load` in the process
`weights_only=True` with only the DeepSpeed types of `checkpointing.safe_globals()` allowed.

Imports torch and deepspeed lazily (the training engine's side only).
"""

from __future__ import annotations

import contextlib
import shutil
import time
from argparse import Namespace
from collections.abc import Iterator
from pathlib import Path

from bsm_ray.train.checkpointing import STATE_TAG, safe_globals

UNIVERSAL_TAG = f"{STATE_TAG}_universal"


@contextlib.contextmanager
def safe_torch_load() -> Iterator[None]:
    """Inside: every `torch.load` reads with `weights_only=True` (safe globals only), whatever
    `weights_only` its caller asked for."""
    import torch

    original = torch.load
    allowed = safe_globals()

    def load(f, map_location=None, *args, **kwargs):
        kwargs["weights_only"] = True
        with torch.serialization.safe_globals(allowed):
            return original(f, map_location, *args, **kwargs)

    torch.load = load
    try:
        yield
    finally:
        torch.load = original


def universal_folder(checkpoint: Path, step: int, storage_path: str, run_name: str) -> Path:
    """The node-local folder a run converts `checkpoint` into: the same for every worker of the
    run, its own for each run. Trials of a sweep start from one base checkpoint at the same
    time; with one folder per checkpoint, one trial's conversion deleted what another was
    loading (DeepSpeed then failed with `assert len(self.ckpt_list) > 0`)."""
    import hashlib
    import tempfile

    text = f"{Path(checkpoint).resolve()}:{step}:{storage_path}|{run_name}"
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"bsm-universal-{digest}"


def convert_to_universal(checkpoint: Path, out_dir: Path) -> float:
    """Convert `checkpoint`'s DeepSpeed state (`<checkpoint>/state/`) into the universal format
    under `out_dir/<UNIVERSAL_TAG>/`; returns the seconds it took."""
    from deepspeed.checkpoint import ds_to_universal

    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / UNIVERSAL_TAG
    if target.exists():
        shutil.rmtree(target)
    args = Namespace(
        input_folder=str(Path(checkpoint) / STATE_TAG), output_folder=str(target),
        num_extract_workers=1, num_merge_workers=1, keep_temp_folder=False, strict=True,
        inject_missing_state=True,
    )  # fmt: skip
    t0 = time.perf_counter()
    with safe_torch_load():  # the converter prints its stages and progress bars
        ds_to_universal.main(args)
    return time.perf_counter() - t0


def load_universal(engine, universal_dir: Path) -> None:
    """Load a converted checkpoint (`convert_to_universal`'s `out_dir`) into `engine`: weights,
    optimizer moments and step, partitioned for the engine's own world size and ZeRO stage."""
    engine._config.load_universal_checkpoint = True
    try:
        with safe_torch_load():
            engine.load_checkpoint(str(universal_dir), tag=UNIVERSAL_TAG)
    finally:
        engine._config.load_universal_checkpoint = False
