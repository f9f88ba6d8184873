"""Inference on a new halo: the two-step posterior for one 64x64 chemical-plane histogram.

Step 1 gives p(N_sub | x) (classifier or NPE). Step 2 per rank samples theta_i | x, N_sub, i as
a **mixture over step 1's samples**: each N_sub draw is paired with one theta draw of every rank
up to ``ranks`` (ranks above the drawn N_sub are NaN), so the theta samples carry step 1's
uncertainty (``nsub_draw="mixture"``); ``nsub_draw="mode"`` conditions every theta draw on the
most probable N_sub instead. A joint-mode model (fixed N_sub) is sampled as it is, independent
of step 1. Each model's role comes from its task (``casbi_store.learn.tasks``: its step, whether it
needs N_sub, its preference among the models of its step).

The observation is a histogram (.npy, or .nc with ``x``/``counts``) binned with the store's
binning, or a star table (CSV with [Fe/H] and [O/Fe] columns) binned here with the bin edges the
model saved from its store.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from casbi_store import InputError
from casbi_store.learn.misspecification import Assessment, assess, warn_if_flagged
from casbi_store.learn.modelfolder import TrainedModel, as_model, n_obs_range
from casbi_store.learn.tasks import by_preference, task_names
from casbi_store.store import schema as S
from casbi_store.store.binning import bin_stars

from .observe import (
    BinningSource,
    NObsRangeWarning,
    ObservationError,
    load_binning_source,
    observe_table,
    read_observation,
    warn_if_outside_n_obs,
)
from .posteriors import load_posterior, sample_in_prior, seeded_generator
from .support import (
    MIN_INSIDE,
    MIN_SUPPORTED,
    flag_answer,
    model_blocks,
    supported_fraction,
    warn_if_thin,
)
from .twostep import mixture_samples, nsub_step

NSUB_DRAWS = ("mixture", "mode")

FEH_COLUMNS = ("[Fe/H]", "feh", "FeH", "fe_h")
OFE_COLUMNS = ("[O/Fe]", "ofe", "OFe", "o_fe")


def check_histogram(x: np.ndarray, where: str | os.PathLike) -> np.ndarray:
    """A 64x64 histogram of finite, non-negative counts with at least one star, as float32;
    ``ObservationError`` naming ``where`` otherwise (an empty histogram carries no information,
    and the flows would still answer with the prior's shape)."""
    x = np.squeeze(np.asarray(x, dtype=np.float32))
    if x.shape != (S.N_BINS, S.N_BINS):
        raise ObservationError(f"{where}: histogram has shape {x.shape}, expected "
                               f"({S.N_BINS}, {S.N_BINS}) binned with the store's binning")
    if not np.isfinite(x).all():
        raise ObservationError(f"{where}: histogram has {int((~np.isfinite(x)).sum())} "
                               "non-finite counts")
    if (x < 0).any():
        raise ObservationError(f"{where}: histogram has {int((x < 0).sum())} negative counts")
    if x.sum() == 0:
        raise ObservationError(f"{where}: histogram is all zeros: no star to infer from")
    return x


def read_histogram(path: str | os.PathLike, feh_edges: np.ndarray | None = None,
                   ofe_edges: np.ndarray | None = None) -> np.ndarray:
    """A 64x64 histogram from .npy, or from .nc (an observation written by ``casbi-store
    observe``, refused if binned with other edges than those given, or a variable ``x`` or
    ``counts``)."""
    return _read_histogram(Path(path), feh_edges, ofe_edges)[0]


def _read_histogram(path: Path, feh_edges: np.ndarray | None, ofe_edges: np.ndarray | None
                    ) -> tuple[np.ndarray, dict | None]:
    """The histogram and, for an observation file, its attributes."""
    if not path.is_file():
        raise ObservationError(f"{path}: no such histogram file")
    attrs = None
    try:
        if path.suffix == ".npy":
            x = np.load(path, allow_pickle=False)
        elif path.suffix == ".nc":
            with xr.open_dataset(path) as ds:
                if S.ATTR_OBSERVATION_VERSION in ds.attrs:
                    ds.close()
                    x, attrs = read_observation(path, feh_edges, ofe_edges)
                elif S.X.name not in ds and S.COUNTS.name not in ds:
                    raise ObservationError(f"{path}: no variable {S.X.name!r} or "
                                           f"{S.COUNTS.name!r}")
                else:
                    x = ds[S.X.name if S.X.name in ds else S.COUNTS.name].values
        else:
            raise ObservationError(f"{path}: expected a .npy or .nc histogram (or --stars for a "
                                   "CSV table)")
    except ObservationError:
        raise
    except Exception as exc:  # a damaged file: numpy's and netCDF's own errors
        raise ObservationError(f"{path}: not readable as a histogram ({type(exc).__name__}: "
                               f"{exc})") from exc
    return check_histogram(x, path), attrs


def _column(header: list[str], names: tuple[str, ...], path: Path) -> int:
    for name in names:
        if name in header:
            return header.index(name)
    raise ObservationError(f"{path}: no column named any of {names}; columns are {header}")


def read_star_table(path: str | os.PathLike, feh_edges: np.ndarray, ofe_edges: np.ndarray
                    ) -> tuple[np.ndarray, dict]:
    """Bin a CSV of stars ([Fe/H], [O/Fe] columns) with the given edges; returns the histogram
    and a summary (stars read, binned, outside the range or not finite)."""
    path = Path(path)
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if len(rows) < 2:
        raise ObservationError(f"{path}: empty star table (need a header and at least one star)")
    header = [h.strip() for h in rows[0]]
    i_fe, i_o = _column(header, FEH_COLUMNS, path), _column(header, OFE_COLUMNS, path)
    try:
        values = np.array([[float(r[i_fe]), float(r[i_o])] for r in rows[1:] if r], dtype=float)
    except (ValueError, IndexError) as exc:
        raise ObservationError(f"{path}: unreadable value in the [Fe/H]/[O/Fe] columns ({exc})") from exc
    if not len(values):
        raise ObservationError(f"{path}: empty star table (need at least one star)")
    i, j = bin_stars(values[:, 0], feh_edges), bin_stars(values[:, 1], ofe_edges)
    keep = (i >= 0) & (j >= 0)
    if not keep.any():
        raise ObservationError(
            f"{path}: 0 of {len(values)} stars binned: none lies inside the model's binning "
            f"([Fe/H] {feh_edges[0]:.2f}..{feh_edges[-1]:.2f}, [O/Fe] {ofe_edges[0]:.2f}.."
            f"{ofe_edges[-1]:.2f} dex) or they are not finite")
    n = len(feh_edges) - 1
    hist = np.bincount(i[keep] * n + j[keep], minlength=n * n).reshape(n, n).astype(np.float32)
    return hist, {"stars": len(values), "binned": int(keep.sum()), "outside": int((~keep).sum())}


@dataclass(frozen=True)
class ObservedHistogram:
    """A histogram read from a file for a model, with what the samples' attributes and the
    printed summary should say about it."""

    counts: np.ndarray
    attrs: dict
    summary: str


CARRIED = ("n_rows", "table", "table_sha256", "ofe_mapping", "ofe_caveat", "quality_expression")


def describe_observation(path: Path, counts: np.ndarray, obs: dict) -> ObservedHistogram:
    """The attributes and summary of an observation (``observe``'s fields, as a dict, e.g. the
    attributes ``observe.read_observation`` returns): stars binned, dropped per reason, cuts."""
    attrs = {"observation": str(path), "n_obs": int(counts.sum()),
             "dropped": json.dumps(obs["dropped"]), **{k: obs[k] for k in CARRIED}}
    lines = [f"{path}: {attrs['n_obs']} of {obs['n_rows']} stars binned, from {obs['table']} "
             "(dropped: " + ", ".join(f"{k} {v}" for k, v in obs["dropped"].items()) + ")",
             f"  table sha256 {obs['table_sha256']}"]
    if obs["quality_expression"]:
        lines.append(f"  quality cut: {obs['quality_expression']}")
    if obs["ofe_caveat"]:
        lines += [f"  [O/Fe] axis: {obs['ofe_mapping']}", f"  caveat: {obs['ofe_caveat']}"]
    return ObservedHistogram(counts, attrs, "\n".join(lines))


def read_input(path: str | os.PathLike, model: TrainedModel | str | os.PathLike,
               source: BinningSource | None = None) -> ObservedHistogram:
    """An observation for ``model``: a histogram (.npy, .nc; an observation file written by
    ``casbi-store observe`` is refused if binned with other edges than the model's) or a star
    table (CSV, FITS) read, cut and binned with the model's binning exactly as ``casbi-store
    observe --binning MODEL`` does (``observe.observe_table``, default cuts); an
    ``ObservationError`` naming the file if it carries no information. ``source``: the model's
    ``observe.load_binning_source``, when many tables are read for one model."""
    path, model = Path(path), as_model(model)
    if path.suffix.lower() in (".csv", ".fits", ".fit", ".gz"):
        with warnings.catch_warnings():  # infer checks the N_obs it conditions on itself
            warnings.simplefilter("ignore", NObsRangeWarning)
            obs = observe_table(path, source or load_binning_source(model.path))
        fields = {"quality_expression": obs.where,
                  **{k: getattr(obs, k) for k in ("dropped", *CARRIED[:-1])}}
        return describe_observation(path, check_histogram(obs.counts, path), fields)
    x, obs = _read_histogram(path, model.stats["feh_edges"], model.stats["ofe_edges"])
    if obs is None:
        return ObservedHistogram(x, {"observation": str(path), "n_obs": float(x.sum())},
                                 f"{path}: histogram of {x.sum():g} stars")
    return describe_observation(path, x, obs)


def at_n_obs(histogram: np.ndarray, n_obs: float, models: list[TrainedModel]) -> np.ndarray:
    """The histogram rescaled to a total of ``n_obs``: how a density and a separate N_obs are
    given to models of the ``normalised`` representation (their input layer splits a histogram
    into its shape and its total); refused for a model that sees the counts."""
    if isinstance(n_obs, bool) or not isinstance(n_obs, (int, float, np.integer, np.floating)) \
            or not np.isfinite(n_obs) or n_obs < 1:
        raise InputError(f"n_obs must be a number >= 1, not {n_obs!r}")
    counts = [str(m.path) for m in models if m.representation != "normalised"]
    if counts:
        raise InputError(f"n_obs is a condition of models of the normalised representation only; "
                         f"{', '.join(counts)} see(s) the counts, whose total is the N_obs: "
                         "give the histogram of the observed stars instead")
    return (histogram * (float(n_obs) / float(histogram.sum()))).astype(np.float32)


def _var(values, dims, name: str, model: TrainedModel, **attrs) -> xr.Variable:
    return xr.Variable(dims, values, attrs={"units": model.task_spec.units(name),
                                            "model": str(model.path), "task": model.task, **attrs})


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{name} must be an integer >= 1, not {value!r}")
    return int(value)


def infer(models: list[TrainedModel | str | os.PathLike],
          histogram: np.ndarray | ObservedHistogram | str | os.PathLike,
          n_samples: int = 10_000, seed: int = 0, nsub_draw: str = "mixture", ranks: int = 3,
          n_obs: float | None = None) -> xr.Dataset:
    """Posterior samples for one histogram from step-1 and step-2 model folders.

    Variables: ``n_sub`` (sample) from the step-1 model that drives step 2 (the preferred one:
    the classifier if given, else the NPE; any other, if given too, as ``n_sub_<suffix>``, e.g.
    ``n_sub_npe``), per-rank ``log10_mstar``, ``log10_mdm``, ``tau`` (sample, rank), and
    joint-mode ``<param>_<k>``. ``nsub_draw``: ``"mixture"`` (theta conditioned on each N_sub
    draw) or ``"mode"`` (on step 1's most probable N_sub).

    ``histogram``: a 64x64 array, a file (read by ``read_input`` with the first model's edges)
    or what ``read_input`` returned; what is known about it (N_obs, for an observation file
    the table's checksum, the stars dropped and the [O/Fe] mapping) goes into the attributes,
    with its misspecification score (``casbi_store.learn.misspecification``: ``misspecification``, a
    JSON record, and ``misspecification_score``/``_threshold``/``_flagged``); a
    ``MisspecificationWarning`` when it lies above the threshold, an ``observe.NObsRangeWarning``
    when the N_obs conditioned on lies outside the range a normalised model was trained on.

    ``n_obs``: for models of the ``normalised`` representation, the N_obs to condition on when the
    histogram's total is not it (e.g. a density of sum 1): the histogram is rescaled to that
    total (``at_n_obs``). Default: its total, which for an observation is its N_obs.
    """
    if nsub_draw not in NSUB_DRAWS:
        raise InputError(f"nsub_draw must be one of {NSUB_DRAWS}, not {nsub_draw!r}")
    n_samples, ranks = _positive_int(n_samples, "n_samples"), _positive_int(ranks, "ranks")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed must be an integer >= 0, not {seed!r}")
    if not models:
        raise InputError("no model folder given")
    loaded = [as_model(m) for m in models]
    for m in loaded[1:]:
        if not all(np.array_equal(m.stats[k], loaded[0].stats[k])
                   for k in ("feh_edges", "ofe_edges")):
            raise InputError(f"{m.path} and {loaded[0].path} were trained on other binnings; "
                             "give models of one store's binning")
    if isinstance(histogram, (str, os.PathLike)):
        histogram = read_input(histogram, loaded[0])
    if isinstance(histogram, ObservedHistogram):
        observed = histogram.attrs
        histogram = histogram.counts
    else:
        histogram = check_histogram(histogram, "the histogram given to infer")
        observed = {"n_obs": float(histogram.sum())}
    if n_obs is not None:
        histogram = at_n_obs(histogram, n_obs, loaded)
        observed = {**observed, "n_obs": float(n_obs)}
    total = float(n_obs) if n_obs is not None else float(histogram.sum())  # the N_obs seen
    for m in loaded:  # one warning: the models of a pair share their training set
        r = n_obs_range(m.meta)
        if r is not None and not r[0] <= total <= r[1]:
            warn_if_outside_n_obs(total, m.path, r)
            break
    misspecification = assess([m.path for m in loaded], histogram)
    warn_if_flagged(misspecification)
    by_task = {}
    for m in loaded:
        other = by_task.setdefault(m.task, m)
        if other is not m:
            raise InputError(f"two {m.task} models given ({other.path}, {m.path})")
    x = torch.as_tensor(histogram, dtype=torch.float32)[None, None]
    data: dict[str, xr.Variable] = {}
    step1 = [by_task[t] for t in by_preference(by_task, 1)]
    draws = None
    for model in step1:
        s = nsub_step(model).draws(x, n_samples, [seed])[:, 0]
        name = "n_sub" if draws is None else f"n_sub_{model.task_spec.infer_suffix}"
        data[name] = _var(s, "sample", "n_sub", model)
        draws = s if draws is None else draws
    step2 = [by_task[t] for t in by_preference(by_task, 2)]
    ranked = False
    for model in step2:
        if model.task_spec.needs_nsub:
            if draws is None:
                raise InputError(f"a {model.task} model needs a step-1 model (one of "
                                 f"{by_preference(task_names(), 1)}) among "
                                 "the model folders")
            if nsub_draw == "mode":
                first = nsub_step(step1[0])
                draws = np.full(n_samples, first.values[np.argmax(first.probabilities(x, [seed])[0])])
            mixture = mixture_samples(model, x, draws[:, None], ranks, [seed])
            theta = mixture.samples[:, 0]
            for k, name in enumerate(model.parameters):
                data[name] = _var(theta[..., k], ("sample", "rank"), name, model,
                                  nsub_draw=nsub_draw)
            ranked = True
            observed.update(_support_attrs(model, theta[:, 0], float(mixture.first_inside[0])))
        else:
            s = sample_in_prior(load_posterior(model), model, n_samples, x,
                                seeded_generator(seed, 32))
            for k, name in enumerate(model.parameters):
                data[name] = _var(s[:, k], "sample", name, model, n_sub=model.joint_n_sub)
    coords = {"rank": np.arange(1, ranks + 1)} if ranked else {}
    return xr.Dataset(data, coords=coords,
                      attrs={"models": json.dumps([str(m.path) for m in loaded]),
                             "representations": json.dumps([m.representation for m in loaded]),
                             "n_samples": n_samples, "seed": seed, "nsub_draw": nsub_draw,
                             **observed, **misspecification.attrs()})


def _support_attrs(model: TrainedModel, top: np.ndarray, inside: float) -> dict:
    """The two signals of ``apply.support``: the share of the flow's draws inside the training
    box (``inside``: low when the halo is unlike every training halo) and the share of the top
    block's samples near a training galaxy (-1 where the training store cannot be read); one
    ``ThinSupportWarning`` when either fires."""
    blocks = model_blocks(model.meta)
    fraction = -1.0 if blocks is None else float(supported_fraction(blocks, top))
    warn_if_thin(fraction, inside, str(model.path))
    return {"support_fraction": fraction, "support_box_inside": inside,
            "support_flagged": int(flag_answer(fraction, inside)),
            "support_min_fraction": MIN_SUPPORTED, "support_min_inside": MIN_INSIDE}


def flat_samples(samples: xr.Dataset, max_rank: int = 1) -> dict[str, np.ndarray]:
    """Named 1-d sample arrays (per-rank variables split into ``<name>_<rank>``)."""
    out = {}
    for name, var in samples.data_vars.items():
        if "rank" in var.dims:
            for r in var["rank"].values[:max_rank]:
                out[f"{name}_{r}"] = var.sel(rank=r).values
        else:
            out[name] = var.values
    return out


class _DropMessage(logging.Filter):
    """Drops log records whose message starts with ``prefix``."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


_TOO_FEW_POINTS = _DropMessage("Too few points to create valid contours")


def corner_plot(samples: xr.Dataset | dict, out: str | os.PathLike, truth: dict | None = None,
                max_params: int = 7) -> Path:
    """Corner plot (``corner``) of the samples, the truth marked if given."""
    import corner
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    flat = flat_samples(samples) if isinstance(samples, xr.Dataset) else samples
    names = [n for n, v in flat.items() if np.isfinite(v).sum() > 1 and np.ptp(v[np.isfinite(v)]) > 0]
    names = names[:max_params]
    data = np.column_stack([flat[n] for n in names])
    data = data[np.isfinite(data).all(axis=1)]
    truths = [truth.get(n) for n in names] if truth else None
    assessment = Assessment.from_attrs(samples.attrs) if isinstance(samples, xr.Dataset) else None
    root = logging.getLogger()  # corner logs this on the root logger for narrow posteriors
    root.addFilter(_TOO_FEW_POINTS)
    try:
        fig = corner.corner(data, labels=names, truths=truths, truth_color="C3",
                            quantiles=[0.16, 0.5, 0.84], show_titles=True, title_fmt=".2f",
                            title_kwargs={"fontsize": 8}, label_kwargs={"fontsize": 8})
    finally:
        root.removeFilter(_TOO_FEW_POINTS)
    if assessment is not None:  # the misspecification score with every inference's picture
        fig.suptitle(assessment.title(), y=1.0, va="bottom", fontsize=9,
                     color="C3" if assessment.flagged else "k")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90, bbox_inches="tight" if assessment is not None else None)
    plt.close(fig)
    return out
