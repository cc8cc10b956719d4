"""MLflow tracking: the store, runs and rank-0 metric logging (the only module importing mlflow)."""

from bsm_ray.tracking.config import TrackingConfig, resolve_tracking_uri

__all__ = ["TrackingConfig", "resolve_tracking_uri"]
