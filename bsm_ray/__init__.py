"""bsm_ray: distributed pretraining of biological sequence models (BSM, CM-GEMS) on Ray.

Importing the package is cheap: it must not import ray, torch, deepspeed or mlflow. Those are
imported by the modules at the edges (data pipeline, training, tuning, tracking) when used.
"""

__version__ = "0.1.0"
