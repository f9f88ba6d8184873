"""Is this observation like anything the model was trained on? A calibrated misspecification score.

sbi answers every observation, also one unlike its training halos, and the posterior is then
confidently wrong. This score says how far an observation's chemical plane lies from the
training halos', on a scale calibrated on held-out halos of the training distribution.

- **Features.** Per component, the histogram is pooled into cells of ``pool`` = ([Fe/H] bins,
  [O/Fe] bins), normalised to fractions and square-rooted: the Euclidean distance of two
  feature vectors is sqrt(2) times the Hellinger distance of the two pooled planes, whatever
  their star counts (the square root also evens out the shot noise of empty and full bins).
  The default components: the plane in 4x4-bin cells (16x16, format 1's only component) and
  the [O/Fe] distribution in 8 bins of 0.17 dex (cells of 64x8). Halos of one physics differ
  most in [Fe/H] (their dwarfs' masses), while their [O/Fe] levels are set by the yields and
  the SN Ia delays: a shift of every [O/Fe] by 0.11 dex that hides in the plane's halo-to-halo
  spread stands out in the [O/Fe] distribution (bench/README.md).
- **Score.** Per component, the mean distance of the observation to its ``k`` nearest
  neighbours among up to ``max_reference`` halos of the set's training split (the reference,
  drawn at random), divided by the component's scale (the ``quantile`` of the held-out halos'
  distances); the score is the largest of these ratios. Format 1 (one component, no scale):
  the distance itself.
- **Calibration.** The scores of up to ``max_calibration`` held-out halos against the
  reference; the threshold is their ``quantile`` (0.99): about 1% of halos like the training
  ones score above it (false alarms). The held-out halos are the test split when the set holds
  out simulations or galaxies (``split_by``): made of dwarfs the reference never saw, as a real
  observation is. Otherwise the validation split: new combinations of the training dwarfs,
  which score lower than new dwarfs do, so the false-alarm rate on new dwarfs is then higher
  than 1 - quantile (on the demo: 4% instead of 1%, see bench/README.md). The p-value of a
  score is the share of the held-out halos scoring at least as high. The score depends on the
  training set only, not on the networks' weights.

``misspecification.npz`` in the model folder holds the reference features (the components'
side by side), the sorted calibration scores and a JSON record (options, ``components``: each
pool and scale, threshold, training set); it is written atomically at the end of ``train`` or
by ``casbi-store calibrate-ood MODEL``. A format-1 file (``pool``: one integer) still scores as
it was calibrated; ``calibrate-ood`` rewrites it in format 2. A folder without it still infers,
its score reported as unavailable with the reason; a damaged one, one of an unknown format, or
one made for other bin edges than the model's, is refused with a ``ModelFolderError`` naming it.

What it does not guarantee: a low score says the plane looks like some training halos at the
components' resolutions, not that the posterior is right (physics that mimics the training
planes passes: on the bench, twice the star-formation efficiency is not flagged, a DTD slope of
-1.5 only in part); a high score says the observation is unusual for the training set, not why
(other physics, systematics, selection, too few stars).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from casbi_store import CasbiError, InputError
from casbi_store.store import schema as S
from casbi_store.store.atomic import atomic_path
from casbi_store.store.provenance import utc_now

from .modelfolder import CONFIG, ModelFolderError, read_meta, read_transform

log = logging.getLogger(__name__)

CALIBRATION = "misspecification.npz"
FORMAT_VERSION = 2  # 2: components, each a ([Fe/H], [O/Fe]) pooling and a scale; 1: one pool
READABLE_FORMATS = (1, 2)
METHOD = "knn-hellinger"
# the plane in 4x4-bin cells (16x16) and the [O/Fe] distribution in 8 bins of 0.17 dex
DEFAULTS = {"k": 5, "pools": ((4, 4), (64, 8)), "quantile": 0.99, "max_reference": 4000,
            "max_calibration": 4000}
MIN_HALOS = 20  # fewest reference and calibration halos a calibration accepts
HELD_OUT_SPLITS = ("simulation", "galaxy")  # split_by values whose test split holds out galaxies
META_KEYS = ("format_version", "method", "k", "quantile", "threshold", "set", "version",
             "store", "reference_split", "calibration_split", "created")


class CalibrationError(CasbiError, ValueError):
    """A training set that cannot calibrate the score (too few halos in a split)."""


class MisspecificationWarning(UserWarning):
    """An observation scores above the threshold: unlike the halos the model was trained on."""


def pool_pair(pool: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """``pool`` as ([Fe/H] bins, [O/Fe] bins) per cell: one integer pools both axes alike."""
    pair = (pool, pool) if isinstance(pool, int) else tuple(pool)
    if len(pair) != 2 or not all(isinstance(p, int) and not isinstance(p, bool) and p >= 1
                                 for p in pair):
        raise InputError(f"pool must be a positive integer or a pair of them, not {pool!r}")
    return pair


def n_features(pool: int | tuple[int, int] | list[int], shape=(S.N_BINS, S.N_BINS)) -> int:
    """Length of a feature vector of histograms of ``shape`` pooled by ``pool``."""
    a, b = pool_pair(pool)
    return (shape[0] // a) * (shape[1] // b)


def features(x: np.ndarray, pool: int | tuple[int, int] | list[int]) -> np.ndarray:
    """(n, cells) float32: square roots of the pooled, normalised histograms (``x``: one (64, 64)
    histogram or a stack (n, 64, 64) of non-negative counts, axes [Fe/H], [O/Fe]; ``pool``: bins
    per cell along them, one integer for both)."""
    pa, pb = pool_pair(pool)
    x = np.asarray(x, dtype=np.float64)
    x = x.reshape((-1,) + x.shape[-2:])
    n, a, b = x.shape
    if a % pa or b % pb:
        raise InputError(f"pool {(pa, pb)} does not divide the histogram's shape {(a, b)}")
    pooled = x.reshape(n, a // pa, pa, b // pb, pb).sum(axis=(2, 4)).reshape(n, -1)
    total = pooled.sum(axis=1, keepdims=True)
    return np.sqrt(pooled / np.where(total > 0, total, 1)).astype(np.float32)


def all_features(x: np.ndarray, pools: list[tuple[int, int]]) -> np.ndarray:
    """The features of every pooling of ``pools``, side by side."""
    return np.hstack([features(x, p) for p in pools])


def component_distances(query: np.ndarray, reference: np.ndarray, pools: list[tuple[int, int]],
                        k: int) -> np.ndarray:
    """(n, len(pools)): ``knn_distance`` on each pooling's columns of ``all_features``."""
    out, start = [], 0
    for p in pools:
        cols = slice(start, start + n_features(p))
        out.append(knn_distance(query[:, cols], reference[:, cols], k))
        start = cols.stop
    return np.stack(out, axis=1)


def knn_distance(query: np.ndarray, reference: np.ndarray, k: int) -> np.ndarray:
    """Mean Euclidean distance of each query row to its ``k`` nearest reference rows
    (scikit-learn's exact brute-force search, in float64)."""
    from sklearn.neighbors import NearestNeighbors

    index = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(reference.astype(np.float64))
    distances, _ = index.kneighbors(np.asarray(query, dtype=np.float64))
    return distances.mean(axis=1)


@dataclass(frozen=True)
class Calibration:
    """The reference halos' features, the calibration scores (sorted) and the record."""

    reference: np.ndarray  # (n_reference, features) float32
    scores: np.ndarray  # (n_calibration,) sorted
    feh_edges: np.ndarray
    ofe_edges: np.ndarray
    meta: dict

    @property
    def threshold(self) -> float:
        return float(self.meta["threshold"])

    @property
    def quantile(self) -> float:
        return float(self.meta["quantile"])

    @property
    def pools(self) -> list[tuple[int, int]]:
        """The components' poolings (format 1: its one pool)."""
        if "components" in self.meta:
            return [pool_pair(c["pool"]) for c in self.meta["components"]]
        return [pool_pair(self.meta["pool"])]

    @property
    def scales(self) -> np.ndarray:
        """The components' scales (format 1: 1, the distance itself is the score)."""
        if "components" in self.meta:
            return np.array([c["scale"] for c in self.meta["components"]], dtype=np.float64)
        return np.ones(1)

    def distances(self, x: np.ndarray) -> np.ndarray:
        """(n, components): each component's mean distance to its k nearest reference halos."""
        return component_distances(all_features(x, self.pools), self.reference, self.pools,
                                   self.meta["k"])

    def score(self, x: np.ndarray) -> np.ndarray:
        """Scores of one histogram or a stack of them (binned with this calibration's edges):
        the largest of the components' distances, each over its scale."""
        return (self.distances(x) / self.scales).max(axis=1)

    def p_value(self, score: float) -> float:
        """Share of the calibration halos scoring at least ``score`` ((m + 1) / (n + 1))."""
        above = len(self.scores) - np.searchsorted(self.scores, score, side="left")
        return float((above + 1) / (len(self.scores) + 1))


def _split_features(store, name: str, version: str, split: str, limit: int, rng,
                    pools: list[tuple[int, int]], storage_options: dict | None) -> np.ndarray:
    """Features of up to ``limit`` halos of a split drawn at random, read chunk by chunk."""
    from casbi_store.store.trainingsets import open_split_group

    x = open_split_group(store, name, version, split, storage_options)[S.X.name]
    n = x.shape[0]
    if n < MIN_HALOS:
        raise CalibrationError(f"{os.fspath(store)}: {name}:{version} has {n} {split} halo(s); "
                               f"the misspecification score needs at least {MIN_HALOS}")
    keep = np.sort(rng.choice(n, size=min(limit, n), replace=False))
    rows = x.chunks[0]
    out = []
    for start in range(0, n, rows):
        wanted = keep[(keep >= start) & (keep < start + rows)] - start
        if len(wanted):
            out.append(all_features(np.asarray(x[start:start + rows])[wanted], pools))
    return np.concatenate(out)


def calibration_split(split_by: str) -> str:
    """Where the threshold is calibrated: the test split when it holds out simulations or
    galaxies (its halos are made of galaxies the reference never saw, as an observation's are),
    else the validation split (new combinations of the training galaxies)."""
    return "test" if split_by in HELD_OUT_SPLITS else "val"


def calibrate(store: str | os.PathLike, name: str, version: str, *, k: int = DEFAULTS["k"],
              pools: Sequence[int | tuple[int, int]] = DEFAULTS["pools"],
              quantile: float = DEFAULTS["quantile"],
              max_reference: int = DEFAULTS["max_reference"],
              max_calibration: int = DEFAULTS["max_calibration"], seed: int = 0,
              split: str = "auto", storage_options: dict | None = None) -> Calibration:
    """The score of training set ``name:version``: reference from its training split,
    threshold the ``quantile`` of the scores of ``split`` (``"auto"``: ``calibration_split`` of
    the set's ``split_by``; ``"val"``; ``"test"``). ``pools``: one component per pooling
    (bins per cell along [Fe/H], [O/Fe]; one integer for both), its scale the ``quantile`` of
    its own held-out distances."""
    from casbi_store.store.trainingsets import binning, resolve_version

    pools = [pool_pair(p) for p in pools]
    bad = [p for p in pools if S.N_BINS % p[0] or S.N_BINS % p[1]]
    if bad or not pools:
        raise InputError(f"pools {bad or pools} do not divide the histograms' {S.N_BINS} bins")
    if not (isinstance(k, int) and k >= 1 and 0 < quantile < 1 and max_reference >= MIN_HALOS
            and max_calibration >= MIN_HALOS):
        raise InputError(f"need k >= 1, 0 < quantile < 1 and at least {MIN_HALOS} reference and "
                         f"calibration halos, not k={k}, quantile={quantile}, "
                         f"max_reference={max_reference}, max_calibration={max_calibration}")
    if split not in ("auto", "val", "test"):
        raise InputError(f"split must be 'auto', 'val' or 'test', not {split!r}")
    _, entry = resolve_version(store, name, version, storage_options)
    split_by = entry.get("spec", {}).get("split_by", "combination")
    split = calibration_split(split_by) if split == "auto" else split
    rng = np.random.default_rng(seed)
    reference = _split_features(store, name, version, "train", max_reference, rng, pools,
                                storage_options)
    held_out = _split_features(store, name, version, split, max_calibration, rng, pools,
                               storage_options)
    if len(reference) <= k:
        raise CalibrationError(f"{os.fspath(store)}: {name}:{version}: {len(reference)} training "
                               f"halos for k={k} neighbours")
    raw = component_distances(held_out, reference, pools, k)
    scales = np.quantile(raw, quantile, axis=0)
    scales = np.where(scales > 0, scales, 1.0)  # held-out halos all identical to the reference
    scores = np.sort((raw / scales).max(axis=1))
    b = binning(store, name, version, storage_options)
    components = [{"pool": list(p), "scale": float(c)}
                  for p, c in zip(pools, scales, strict=True)]
    meta = {"format_version": FORMAT_VERSION, "method": METHOD, "k": k,
            "components": components,
            "quantile": quantile, "threshold": float(np.quantile(scores, quantile)),
            "set": name, "version": version, "store": os.fspath(store),
            "reference_split": "train", "calibration_split": split, "split_by": split_by,
            "n_reference": len(reference), "n_calibration": len(scores), "seed": seed,
            "created": utc_now()}
    return Calibration(reference, scores, b.feh_edges, b.ofe_edges, meta)


def write_calibration(folder: str | os.PathLike, cal: Calibration) -> Path:
    """``misspecification.npz`` in the model folder, atomically (``store.atomic``)."""
    path = Path(folder) / CALIBRATION
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, reference=cal.reference, scores=cal.scores, feh_edges=cal.feh_edges,
                 ofe_edges=cal.ofe_edges, meta=np.array(json.dumps(cal.meta)))
    return path


def _columns_or_minus_one(meta: dict) -> int:
    """Feature length of the recorded poolings (format 1: ``pool``, one integer; format 2:
    ``components``, each a pair and a positive scale); -1 if invalid or not dividing 64."""
    if meta["format_version"] == 1:
        pools = [meta.get("pool")] if isinstance(meta.get("pool"), int) else None
    else:
        comps = meta.get("components")
        ok = isinstance(comps, list) and comps and all(
            isinstance(c, dict) and isinstance(c.get("scale"), (int, float))
            and np.isfinite(c["scale"]) and c["scale"] > 0 for c in comps)
        pools = [c.get("pool") for c in comps] if ok else None
    try:
        pairs = [pool_pair(p) for p in pools]
    except (TypeError, ValueError):
        return -1
    if any(S.N_BINS % a or S.N_BINS % b for a, b in pairs):
        return -1
    return sum(n_features(p) for p in pairs)


def read_calibration(folder: str | os.PathLike) -> Calibration | None:
    """The folder's calibration; None if it has none; ``ModelFolderError`` naming the file if
    it is damaged, inconsistent or made for other bin edges than the model's."""
    folder = Path(folder)
    path = folder / CALIBRATION
    if not path.exists():
        return None
    again = f"remove it or re-run `casbi-store calibrate-ood {folder}`"
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = dict(f)
        meta = json.loads(str(arrays.pop("meta")))
    except KeyError:
        raise ModelFolderError(f"{path}: no 'meta' record; {again}") from None
    except Exception as exc:  # zip, JSON and value errors of a damaged file
        raise ModelFolderError(f"{path}: not readable ({type(exc).__name__}: {exc}); "
                               f"{again}") from exc
    missing = [k for k in ("reference", "scores", "feh_edges", "ofe_edges") if k not in arrays]
    missing += [k for k in META_KEYS if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise ModelFolderError(f"{path}: missing {missing}; {again}")
    ref, scores = arrays["reference"], arrays["scores"]
    k, fmt = meta["k"], meta["format_version"]
    if fmt not in READABLE_FORMATS:
        raise ModelFolderError(f"{path}: calibration format {fmt!r}, this casbi_store reads "
                               f"formats {list(READABLE_FORMATS)}; {again}")
    cells = _columns_or_minus_one(meta)
    if (meta["method"] != METHOD
            or ref.ndim != 2 or ref.shape[1] != cells or not isinstance(k, int)
            or not 1 <= k < len(ref) or scores.ndim != 1 or len(scores) < MIN_HALOS
            or not np.isfinite(ref).all() or not np.isfinite(scores).all()
            or not np.isfinite(meta["threshold"])):
        raise ModelFolderError(f"{path}: inconsistent calibration (format "
                               f"{meta['format_version']}, method {meta['method']!r}, reference "
                               f"{ref.shape}, k={k}, pool={meta.get('pool')}, components "
                               f"{meta.get('components')}, {scores.shape} scores, "
                               f"threshold {meta['threshold']}); {again}")
    stats = read_transform(folder)
    for key in ("feh_edges", "ofe_edges"):
        if not np.array_equal(arrays[key], stats[key]):
            raise ModelFolderError(f"{path}: made for other {key} than the model's "
                                   f"{folder / 'transform.npz'}; {again}")
    return Calibration(ref, np.sort(scores), arrays["feh_edges"], arrays["ofe_edges"], meta)


def calibrate_model(folder: str | os.PathLike, storage_options: dict | None = None,
                    **options) -> Calibration:
    """Calibrate the score on the training set named in the folder's ``config.json`` and
    write it into the folder (``options``: those of ``calibrate``)."""
    meta = read_meta(Path(folder))
    cal = calibrate(meta["store"], meta["set"], meta["version"],
                    storage_options=storage_options, **options)
    stats = read_transform(Path(folder))
    if not all(np.array_equal(getattr(cal, k), stats[k]) for k in ("feh_edges", "ofe_edges")):
        raise ModelFolderError(f"{Path(folder) / CONFIG}: {meta['set']}:{meta['version']} in "
                               f"{meta['store']} has other bin edges than the model")
    write_calibration(folder, cal)
    return cal


# ---- what infer and observe report ---------------------------------------------------------------

@dataclass(frozen=True)
class Assessment:
    """The misspecification score of one observation, or why it is unavailable."""

    available: bool
    model: str
    score: float = float("nan")
    threshold: float = float("nan")
    p_value: float = float("nan")
    quantile: float = float("nan")
    note: str = ""

    @property
    def flagged(self) -> bool:
        return self.available and self.score > self.threshold

    def summary(self) -> str:
        """One line for people."""
        if not self.available:
            return f"misspecification score: unavailable ({self.note})"
        verdict = ("ABOVE the threshold: unlike the training halos, the posterior may be "
                   "confidently wrong" if self.flagged else "below the threshold: like the "
                   "training halos")
        return (f"misspecification score {self.score:.3f} (threshold {self.threshold:.3f}, "
                f"the {100 * self.quantile:g}th percentile of held-out training halos; "
                f"p = {self.p_value:.3g}): {verdict}")

    def title(self) -> str:
        """A short line for a plot title."""
        if not self.available:
            return "misspecification score: unavailable"
        return (f"misspecification score {self.score:.3f}\n(threshold {self.threshold:.3f}"
                + ("): UNLIKE THE TRAINING HALOS" if self.flagged else "): like the training halos"))

    def warning(self) -> str:
        return (f"the observation is unlike the halos {self.model} was trained on: "
                f"misspecification score {self.score:.3f} above the threshold "
                f"{self.threshold:.3f} (p = {self.p_value:.3g}); its posterior may be confidently "
                "wrong (other physics, systematics or selection than the training set's)")

    def attrs(self) -> dict:
        """NetCDF-safe attributes (numbers and strings) for the posterior samples."""
        record = {"available": self.available, "model": self.model, "score": self.score,
                  "threshold": self.threshold, "p_value": self.p_value,
                  "quantile": self.quantile, "flagged": self.flagged, "note": self.note,
                  "method": METHOD}
        return {"misspecification": json.dumps(record),
                "misspecification_score": self.score,
                "misspecification_threshold": self.threshold,
                "misspecification_flagged": int(self.flagged)}

    @classmethod
    def from_attrs(cls, attrs: dict) -> Assessment | None:
        """The assessment recorded in posterior samples' attributes, if any."""
        if "misspecification" not in attrs:
            return None
        r = json.loads(attrs["misspecification"])
        return cls(r["available"], r["model"], r["score"], r["threshold"], r["p_value"],
                   r["quantile"], r["note"])


def assess(folders: list[str | os.PathLike], histogram: np.ndarray) -> Assessment:
    """The score of ``histogram`` with the calibration of the first of ``folders`` that has
    one; unavailable, with the reason, when none has."""
    folders = [Path(f) for f in folders]
    for folder in folders:
        cal = read_calibration(folder)
        if cal is not None:
            s = float(cal.score(histogram)[0])
            return Assessment(True, str(folder), s, cal.threshold, cal.p_value(s), cal.quantile)
    names = ", ".join(str(f) for f in folders)
    return Assessment(False, names, note=f"no {CALIBRATION} in {names}; run `casbi-store "
                                         "calibrate-ood MODEL` to calibrate it")


def warn_if_flagged(assessment: Assessment) -> None:
    """A ``MisspecificationWarning`` (one line) when the observation scores above threshold."""
    if assessment.flagged:
        warnings.warn(assessment.warning(), MisspecificationWarning, stacklevel=3)


def calibrate_after_training(folder: str | os.PathLike,
                             storage_options: dict | None = None) -> Calibration | None:
    """``calibrate_model`` with the defaults, as ``train`` ends; a set too small to calibrate
    leaves the folder without one (logged: its score is then reported as unavailable)."""
    try:
        return calibrate_model(folder, storage_options)
    except CalibrationError as exc:
        (Path(folder) / CALIBRATION).unlink(missing_ok=True)
        log.warning("%s: no misspecification score: %s", folder, exc)
        return None
