"""BSM's three rounds: which config a round uses and where its starting weights come from.

Round N (N > 1) starts from the final model of round N-1 of the same run family: the run named
`<name>-round<N-1>` under the same storage. Its `final_model/` (Hugging Face format) is found in
its latest checkpoint. Pure module (paths only).
"""

from __future__ import annotations

from pathlib import Path

from bsm_ray.errors import BsmRayError

CONFIG_DIR = Path(__file__).resolve().parents[2] / "jobs" / "configs"


def round_config_path(round_number: int) -> Path:
    if round_number not in (1, 2, 3):
        raise BsmRayError(f"--round must be 1, 2 or 3, got {round_number}")
    return CONFIG_DIR / f"bsm_round{round_number}.yaml"


def final_model_of(storage_path: str, run_name: str) -> Path:
    """The newest `final_model/` of a finished run, or a clear error."""
    run_dir = Path(storage_path).expanduser().resolve() / run_name
    candidates = sorted(run_dir.glob("checkpoint*/final_model"), key=lambda p: p.stat().st_mtime)
    candidates += sorted(run_dir.glob("checkpoints/checkpoint_*/final_model"))
    if not candidates:
        raise BsmRayError(
            f"{run_dir}: no finished run with a final_model/ to start this round from "
            f"(run the previous round first)"
        )
    return candidates[-1]
