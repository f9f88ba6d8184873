"""Estimator tasks as plug-ins: one file per task behind one registry (``base``).

The two-step inference of the seed (section 3.1): step 1 infers N_sub (``nsub``: an NPE,
``nsub_classifier``: a softmax over N_sub), step 2 theta = (log10 M*, log10 M_dm, tau) of the
blocks (``theta``: per rank given N_sub and rank, ``theta_joint``: all blocks of one fixed
N_sub). A new task is one new module here, imported below, that registers a ``Task`` subclass.
"""

from . import nsub, nsub_classifier, theta, theta_joint  # noqa: F401  (they register)
from .base import FlowTask, Task, by_preference, get_task, register, task_names
from .common import (
    BLOCK_PARAMETERS,
    N_PIXELS,
    UNITS,
    block_parameters,
    count_blocks,
    ranked_condition,
)

__all__ = ["BLOCK_PARAMETERS", "N_PIXELS", "UNITS", "FlowTask", "Task", "block_parameters",
           "by_preference", "count_blocks", "get_task", "ranked_condition", "register",
           "task_names"]
