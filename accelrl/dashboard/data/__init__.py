"""What the dashboard knows about each run: followers that read a run folder incrementally
and keep its records in display units, with no plotting library involved."""

from accelrl.dashboard.data.base import Follower
from accelrl.dashboard.data.deploy import DeployFollower
from accelrl.dashboard.data.evaluation import EvaluationFollower
from accelrl.dashboard.data.store import RunStore, follower_for
from accelrl.dashboard.data.training import TrainingFollower
from accelrl.dashboard.data.tuning import TuningFollower

__all__ = [
    "DeployFollower",
    "EvaluationFollower",
    "Follower",
    "RunStore",
    "TrainingFollower",
    "TuningFollower",
    "follower_for",
]
