"""What the command modules share: NAME:VERSION parsing, TrainConfig options, logging, errors."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import warnings
from collections.abc import Callable, Iterator

from casbi_store import InputError

TUNED_OPTIONS = ("batch_size", "learning_rate", "hidden_features", "num_transforms", "embedding_dim")
TRAIN_OPTIONS = ("epochs", "batch_size", "learning_rate", "patience", "hidden_features",
                 "num_transforms", "embedding_dim", "ensemble", "max_rank", "joint_n_sub",
                 "in_memory", "seed", "device", "representation", "embedding", "lr_schedule",
                 "point_estimate_weight", "shift_feh", "shift_ofe", "resample_stars",
                 "bootstrap_simulations")


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input (a file, an option, a store, a model folder): ``main``
    prints them as ``casbi-store: error: ...`` and exits with 2, without a traceback. Every other
    exception is a bug and shows its traceback."""
    from casbi_store import CasbiError

    return (CasbiError,)


def setup_logging(verbose: bool) -> None:
    """INFO (DEBUG with -v) to stderr; third-party warnings and loggers that flood a session off."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # third-party noise on every sampling call (nflows' LU transform, sbi's batch capping)
    warnings.filterwarnings("ignore", message="torch.triangular_solve is deprecated")
    warnings.filterwarnings("ignore", message="Capping max_sampling_batch_size")
    warnings.filterwarnings("ignore", message="To copy construct from a tensor")
    import distributed  # noqa: F401  (configures its loggers on import; quieten them after)

    logging.getLogger("distributed").setLevel(logging.WARNING)


@contextlib.contextmanager
def warnings_as_lines() -> Iterator[None]:
    """Our warnings about an observation (``MisspecificationWarning``, ``NObsRangeWarning``) as
    one ``casbi-store: warning: ...`` line each on stderr, every time; others passed on."""
    from casbi_store.apply.observe import NObsRangeWarning
    from casbi_store.learn.misspecification import MisspecificationWarning

    ours = (MisspecificationWarning, NObsRangeWarning)
    with warnings.catch_warnings(record=True) as caught:
        for category in ours:
            warnings.simplefilter("always", category)
        yield
    for w in caught:
        if issubclass(w.category, ours):
            print(f"casbi-store: warning: {w.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def split_set(value: str) -> tuple[str, str]:
    """``NAME:VERSION`` -> (name, version)."""
    name, _, version = value.partition(":")
    if not version:
        raise InputError(f"--set must be NAME:VERSION (e.g. nsub_uniform:v1), not {value!r}")
    return name, version


class LazyChoices:
    """An argparse ``choices`` read from a registry (``module.name``: a collection, or a
    function giving one) only when argparse needs it (checking a value given, an error,
    ``--help``): the registries live beside torch, and building the parser for ``ls`` or
    ``validate`` should not import it (~2 s a command). Give the argument a ``metavar``:
    argparse lists ``choices`` in the usage line, which it formats when the parser is built."""

    def __init__(self, module: str, name: str, sort: bool = False) -> None:
        self.module, self.name, self.sort = module, name, sort

    def _all(self) -> list[str]:
        import importlib

        names = getattr(importlib.import_module(self.module), self.name)
        names = list(names() if callable(names) else names)
        return sorted(names) if self.sort else names

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __contains__(self, value: object) -> bool:
        return value in self._all()

    def __str__(self) -> str:  # a help's %(choices)s
        return ", ".join(self._all())


class LazyHelp(str):
    """An argparse help text made only when ``--help`` is formatted (argparse expands a help
    with ``help % params``): a registry's descriptions without importing it for every command."""

    def __new__(cls, make: Callable[[], str]) -> LazyHelp:
        obj = super().__new__(cls, "(see --help)")
        obj._make = make
        return obj

    def __mod__(self, params: object) -> str:
        return self._make() % params


REPRESENTATIONS_MODULE = "casbi_store.learn.representations"  # its registries, for LazyChoices


def _task_help() -> str:
    from casbi_store.learn.tasks import get_task, task_names

    return "; ".join(f"{n}: {get_task(n).help}" for n in task_names())


def add_set_options(p: argparse.ArgumentParser, task_help: str | None = None) -> None:
    """The store, ``--set NAME:VERSION`` and ``--task`` arguments of train and tune; the task's
    help lists every task with its description unless ``task_help`` is given."""
    p.add_argument("store", help="store path or URL")
    p.add_argument("--set", required=True, help="NAME:VERSION of a published training set")
    p.add_argument("--task", choices=LazyChoices("casbi_store.learn.tasks", "task_names"),
                   metavar="TASK", required=True,
                   help=LazyHelp(lambda: (task_help or _task_help()).replace("%", "%%")
                                 + " (one of %(choices)s)"))


def add_train_options(p: argparse.ArgumentParser, tuned: bool = False) -> None:
    """The TrainConfig options of `train`; `tune` samples TUNED_OPTIONS instead of taking them."""
    p.add_argument("--epochs", type=int, help="per trial" if tuned else None)
    if not tuned:
        p.add_argument("--batch-size", type=int)
        p.add_argument("--learning-rate", type=float)
    p.add_argument("--patience", type=int, help="epochs without validation improvement to stop")
    if not tuned:
        p.add_argument("--hidden-features", type=int, help="NSF hidden features (default 100)")
        p.add_argument("--num-transforms", type=int, help="NSF transforms (default 10)")
        p.add_argument("--embedding-dim", type=int, help="CNN output features (default 128)")
    p.add_argument("--conv-channels", type=int, nargs="+", help="CNN channels per layer")
    p.add_argument("--ensemble", type=int, help="members trained independently (default 1)")
    p.add_argument("--max-rank", type=int, help="theta: ranks learnt, 1..R (0: all; default 3)")
    p.add_argument("--joint-n-sub", type=int, help="theta_joint: the fixed N_sub")
    p.add_argument("--in-memory", action="store_true", default=None,
                   help="load the split into memory instead of streaming chunks")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", choices=["cpu", "cuda"])
    p.add_argument("--representation",
                   choices=LazyChoices(REPRESENTATIONS_MODULE, "REPRESENTATIONS", sort=True),
                   metavar="NAME", help="what the network sees of the plane: one of "
                                        "%(choices)s (default log1p)")
    p.add_argument("--embedding", choices=LazyChoices(REPRESENTATIONS_MODULE, "EMBEDDINGS"), metavar="NAME",
                   help="the flows' plane embedding: one of %(choices)s (default cnn, the "
                        "seed's CNN)")
    p.add_argument("--lr-schedule", choices=LazyChoices("casbi_store.learn.trainer", "LR_SCHEDULES"),
                   metavar="NAME",
                   help="learning rate over the steps: %(choices)s; constant (default), cosine "
                        "from --learning-rate to 0, or onecycle (warm-up to it, then down)")
    p.add_argument("--point-estimate-weight", type=float,
                   help="weight of a point-estimate head's MSE (an MLP estimate of the "
                        "parameters appended to the flow's condition or the classifier's "
                        "features; default 0: none)")
    p.add_argument("--shift-feh", type=float, metavar="DEX",
                   help="augmentation: each training block moved every epoch by a Gaussian "
                        "offset of this standard deviation in [Fe/H] (default 0: none)")
    p.add_argument("--shift-ofe", type=float, metavar="DEX",
                   help="augmentation: the same in [O/Fe] (default 0)")
    p.add_argument("--resample-stars", action="store_true", default=None,
                   help="augmentation: each training block's counts redrawn (Poisson) every epoch")
    p.add_argument("--bootstrap-simulations", action="store_true", default=None,
                   help="each ensemble member trains on a bootstrap draw of the simulations that "
                        "top the training halos (default: all members see every simulation)")
    if tuned:
        p.set_defaults(**dict.fromkeys(TUNED_OPTIONS))


def train_config(args: argparse.Namespace):
    """The validated ``trainer.TrainConfig`` of the options ``add_train_options`` added."""
    from casbi_store.learn.trainer import TrainConfig

    options = {k: getattr(args, k) for k in TRAIN_OPTIONS}
    if args.conv_channels:
        options["conv_channels"] = tuple(args.conv_channels)
    try:
        return TrainConfig.from_dict({k: v for k, v in options.items() if v is not None})
    except ValueError as exc:  # TrainConfig's checks of the options given
        raise InputError(str(exc)) from exc
