"""The estimator-task contract and its registry.

A task is everything that differs between estimators: the parameters it infers, what it reads
from a training set and how rows become (theta, condition) pairs, its network, its posterior,
how evaluation builds its pairs and names its metrics, and its role in the two-step inference
(step 1: N_sub, step 2: theta). The trainer, posteriors, evaluate, infer, report, tune and the
CLI look a task up by name here and call it; none of them branches on the name. A new task is
one file that subclasses ``Task`` (or ``FlowTask``) and is decorated with ``@register``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from casbi_store import InputError
from casbi_store.learn.estimators import build_npe, with_estimate
from casbi_store.store import schema as S

from .common import UNITS, has_point_estimate, input_options

_REGISTRY: dict[str, Task] = {}
FLOW_TUNED = ("learning_rate", "batch_size", "hidden_features", "num_transforms", "embedding_dim")


class Task:
    """One estimator task. Subclasses set the class attributes and implement the methods that
    raise ``NotImplementedError``; instances are stateless (options are passed to each call)."""

    name: ClassVar[str]
    help: ClassVar[str]  # one line, for the CLI's --task help
    title: ClassVar[str]  # the report's heading
    step: ClassVar[int]  # 1: N_sub, 2: theta
    target: ClassVar[str]  # the training-set variable the stream reads
    condition_shape: ClassVar[tuple[int, ...]] = (1, S.N_BINS, S.N_BINS)
    # where one model of a step is chosen (infer's driving step-1 model, the headline metrics),
    # the lowest preference wins
    preference: ClassVar[int] = 0
    needs_nsub: ClassVar[bool] = False  # step 2 conditioned on step 1's N_sub draws (infer)
    infer_suffix: ClassVar[str] = ""  # step 1: samples named n_sub_<suffix> when not driving
    tuned: ClassVar[tuple[str, ...]] = FLOW_TUNED  # TrainConfig fields a tune samples
    point_estimate: ClassVar[bool] = False  # its network takes a PointEstimate head

    def parameters(self, joint_n_sub: int | None = None) -> list[str]:
        """Names of the parameters the estimator infers, in order (raises for bad options)."""
        raise NotImplementedError

    def units(self, parameter: str) -> str:
        """Units of a parameter (``<name>_<k>`` of joint blocks included)."""
        base = parameter.rsplit("_", 1)[0] if parameter[-1].isdigit() else parameter
        return UNITS.get(parameter, UNITS.get(base, ""))

    def to_training_pair(self, x: torch.Tensor, target: torch.Tensor, *, max_rank: int = 3,
                         joint_n_sub: int | None = None, generator: torch.Generator | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """(theta, condition) for one batch of stream rows; rows the task cannot use dropped."""
        raise NotImplementedError

    def example_parameters(self, target: np.ndarray, *, max_rank: int = 3,
                           joint_n_sub: int | None = None) -> np.ndarray:
        """Every parameter vector the task would learn from these rows (sets the prior box and
        the flow's standardisation)."""
        raise NotImplementedError

    def condition(self, x: torch.Tensor, n_sub: torch.Tensor, rank: torch.Tensor) -> torch.Tensor:
        """The estimator's condition for (N, 1, 64, 64) histograms with given N_sub and rank."""
        return x

    def evaluation_pairs(self, x: torch.Tensor, target: torch.Tensor, *, ranks: int,
                         joint_n_sub: int | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """(true theta, condition, rank of each row, 0 where rankless) for held-out halos."""
        theta, condition = self.to_training_pair(x, target, max_rank=ranks,
                                                 joint_n_sub=joint_n_sub)
        return theta, condition, np.zeros(len(theta), dtype=int)

    def metric_columns(self, parameters: list[str], rank_of: np.ndarray, ranks: int
                       ) -> list[tuple[str, np.ndarray | slice, int]]:
        """(metric name, rows, column of theta) for each parameter evaluation reports."""
        return [(name, slice(None), k) for k, name in enumerate(parameters)]

    def build(self, stats: dict, config: dict[str, Any], n_sub_range: tuple[int, int],
              seed: int) -> nn.Module:
        """The untrained network of a model folder (``transform.npz`` statistics, config)."""
        raise NotImplementedError

    def box_bounds(self, theta_example: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Low and high corners of the prior box: the training parameters' range."""
        low, high = theta_example.min(axis=0), theta_example.max(axis=0)
        return low.astype(np.float32), np.maximum(high, low + 1e-6).astype(np.float32)

    def posterior(self, model) -> Any:
        """The posterior of a loaded model folder (``modelfolder.TrainedModel``)."""
        raise NotImplementedError

    def calibrate(self, members: list[nn.Module], weights: np.ndarray, pairs) -> dict | None:
        """A calibration fitted after training on the validation ``pairs`` (an iterable of
        (theta, condition) batches) and the trained members, stored in the model folder and
        applied by the task's posterior; ``None``: the task has none."""
        return None


class FlowTask(Task):
    """A task learnt by sbi's NSF (NPE): a ``DirectPosterior`` (``EnsemblePosterior`` for
    several members) with a ``BoxUniform`` prior over the training parameters' range."""

    point_estimate = True

    def wrap_embedding(self, embedding: nn.Module, estimate: nn.Module | None = None) -> nn.Module:
        """The image embedding adapted to the task's condition (the image alone), with the
        ``estimators.PointEstimate`` head's output appended where the model has one."""
        return with_estimate(embedding, estimate)

    def build(self, stats: dict, config: dict[str, Any], n_sub_range: tuple[int, int],
              seed: int) -> nn.Module:
        return build_npe(stats["mean"], stats["std"], stats["theta_example"], self.condition_shape,
                         hidden_features=int(config["hidden_features"]),
                         num_transforms=int(config["num_transforms"]),
                         embedding_dim=int(config["embedding_dim"]),
                         conv_channels=tuple(int(c) for c in config["conv_channels"]), seed=seed,
                         wrap=self.wrap_embedding, **input_options(stats, config),
                         point_estimate=has_point_estimate(config))

    def prior(self, theta_example: np.ndarray):
        """sbi's ``BoxUniform`` over ``box_bounds``."""
        from sbi.utils import BoxUniform

        low, high = self.box_bounds(theta_example)
        return BoxUniform(torch.as_tensor(low), torch.as_tensor(high))

    def posterior(self, model) -> Any:
        from sbi.inference import DirectPosterior, EnsemblePosterior

        prior = self.prior(model.stats["theta_example"])
        posteriors = [DirectPosterior(m, prior) for m in model.members]
        if len(posteriors) == 1:
            return posteriors[0]
        return EnsemblePosterior(posteriors,
                                 weights=torch.as_tensor(model.weights, dtype=torch.float32))


def register(cls: type[Task]) -> type[Task]:
    """Class decorator: make a task available by its ``name``."""
    if cls.name in _REGISTRY:
        raise ValueError(f"task {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls()
    return cls


def get_task(name: str) -> Task:
    """The registered task called ``name``."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise InputError(f"task must be one of {task_names()}, not {name!r}") from None


def task_names() -> tuple[str, ...]:
    """Registered task names, in registration order."""
    return tuple(_REGISTRY)


def by_preference(names, step: int) -> list[str]:
    """The names of ``step``'s tasks among ``names``, most preferred first."""
    return sorted((n for n in names if get_task(n).step == step),
                  key=lambda n: get_task(n).preference)
