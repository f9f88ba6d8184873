"""The composition spec: everything that defines a training-set version, validated once.

What a source needs of the spec is asked of the source (:class:`~casbi_store.compose.sources.Source`:
``uses_surrogate``, ``uses_surrogate_fraction``), so the spec names no source.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from casbi_store.store import schema as S
from casbi_store.store import trainingsets

from .sources import ComposeError, ObservationSpec, get_source, source_names

SCHEMES = ("uniform", "mass_budget")
SPLIT_BY = ("combination", "galaxy", "simulation")
VAL_SPLITS = ("halos", "simulations", "simulations_by_mass")
VAL_ON_SIMULATIONS = ("simulations", "simulations_by_mass")  # validation sims of their own
PARAMETERS = ((S.MSTAR.name, "Msol"), (S.MDM.name, "Msol"), ("tau", "Gyr"))
VERSION_PATTERN = trainingsets.VERSION_PATTERN
LIBRARY_DEFAULT = 2000


@dataclass(frozen=True)
class ComposeSpec:
    """Everything that defines a training-set version (validated here, once)."""

    name: str
    version: str
    scheme: str = "uniform"
    seed: int = 0
    split_by: str = "combination"
    test_fraction: float = 0.2  # galaxy/simulation splits: share of blocks/simulations for test
    val_fraction: float = 0.2  # share of the training halos kept for validation
    # "halos": validation halos are new combinations of the training galaxies (the default, as
    # before); "simulations" (split_by simulation): a val_fraction of the training simulations is
    # set aside, and validation halos are drawn from them only, so every choice made on the
    # validation split (early stopping, ensemble weights, temperature, studies) is made on
    # galaxies never trained on; "simulations_by_mass": the same, the validation simulations
    # spread over the suite's range of masses (every k-th in order of each one's most massive
    # galaxy, from a seeded offset) where "simulations" draws them at random: a suite has many
    # more dwarf simulations than massive ones, and a random draw could give validation halos
    # whose top blocks all come from the least massive (measured: bench/README.md, k-fold)
    val_split: str = "halos"
    # uniform: each training halo draws its blocks from the training simulations left after
    # dropping each with this probability (the galaxies of dropped ones only fill in where too
    # few remain), so the most massive block of a large halo is not always the same galaxy of
    # the suite's largest simulation: the networks must read it from the plane (issue 23)
    simulation_dropout: float = 0.0
    # uniform: each training halo weights its blocks by 10^(g (log M* - mean)), g uniform in
    # [-mass_tilt, mass_tilt] per halo: halos of light-leaning and heavy-leaning populations, so
    # N_sub is not read off one suite's mass function (issue 23)
    mass_tilt: float = 0.0
    # split_by simulation, k-fold: with folds = k > 1 the test simulations are fold ``fold`` of
    # k disjoint folds of the seeded permutation of simulations (test_fraction unused), so k
    # sets of one seed hold every simulation out once (bench/bench_unseen.py)
    folds: int = 0
    fold: int = 0
    n_sub_min: int = 2  # uniform
    n_sub_max: int = 100
    train_per_n: int = 1000
    test_per_n: int = 100
    alpha: float = 1.25  # mass_budget
    budget: float = 1.41e9
    n_train: int = 10_000
    n_test: int = 1_000
    noise_feh: float = 0.0  # Gaussian error (dex) on each star's [Fe/H] before binning
    noise_ofe: float = 0.0
    source: str = "real"  # a composition source (casbi_store.compose.sources): real, surrogate, mixed
    surrogate: str = ""  # surrogate model folder (sources surrogate and mixed)
    surrogate_fraction: float = 0.0  # mixed: share of the blocks made by the surrogate
    surrogate_library: int = LIBRARY_DEFAULT  # surrogate and mixed: distinct surrogate blocks to pick from
    observation: ObservationSpec | None = None  # the survey observation model, if any
    description: str = ""

    def __post_init__(self):
        if self.observation is not None and not isinstance(self.observation, ObservationSpec):
            object.__setattr__(self, "observation", ObservationSpec.from_dict(self.observation))
        problems = []
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", self.name):
            problems.append(f"name {self.name!r} must be an identifier (letters, digits, _)")
        if not VERSION_PATTERN.match(self.version):
            problems.append(f"version {self.version!r} must look like v1, v2, ...")
        if self.scheme not in SCHEMES:
            problems.append(f"scheme must be one of {SCHEMES}, not {self.scheme!r}")
        if self.split_by not in SPLIT_BY:
            problems.append(f"split_by must be one of {SPLIT_BY}, not {self.split_by!r}")
        if self.val_split not in VAL_SPLITS:
            problems.append(f"val_split must be one of {VAL_SPLITS}, not {self.val_split!r}")
        elif self.val_split in VAL_ON_SIMULATIONS and self.split_by != "simulation":
            problems.append("val_split simulations needs split_by simulation (validation "
                            "simulations are set aside like the test ones)")
        if self.folds and (self.split_by != "simulation" or self.folds < 2
                           or not 0 <= self.fold < self.folds):
            problems.append(f"folds needs split_by simulation, folds >= 2 and 0 <= fold < folds, "
                            f"not folds {self.folds}, fold {self.fold}")
        if not 0 <= self.simulation_dropout < 1:
            problems.append(f"simulation_dropout must be in [0, 1), not {self.simulation_dropout}")
        elif self.simulation_dropout and self.scheme != "uniform":
            problems.append("simulation_dropout applies to scheme uniform")
        if not 0 <= self.mass_tilt <= 5:
            problems.append(f"mass_tilt must be in [0, 5] (per dex of M*), not {self.mass_tilt}")
        elif self.mass_tilt and self.scheme != "uniform":
            problems.append("mass_tilt applies to scheme uniform")
        if not 0 < self.test_fraction < 1 or not 0 <= self.val_fraction < 1:
            problems.append("test_fraction must be in (0, 1) and val_fraction in [0, 1)")
        if not 1 <= self.n_sub_min <= self.n_sub_max:
            problems.append(f"need 1 <= n_sub_min <= n_sub_max, not {self.n_sub_min}, {self.n_sub_max}")
        if min(self.train_per_n, self.test_per_n, self.n_train, self.n_test) < 1:
            problems.append("halo counts must be positive")
        floats = [f.name for f in fields(self) if f.type == "float"]
        infinite = [k for k in floats if not math.isfinite(getattr(self, k))]
        for key in infinite:
            problems.append(f"{key} must be a finite number, not {getattr(self, key)}")
        if "alpha" not in infinite and "budget" not in infinite and (self.alpha == 1 or self.budget <= 0):
            problems.append("mass_budget needs alpha != 1 and a positive budget")
        for key in ("noise_feh", "noise_ofe"):
            if getattr(self, key) < 0:
                problems.append(f"{key} must be >= 0 dex, not {getattr(self, key)}")
        problems += self._source_problems()
        if problems:
            raise ComposeError("; ".join(problems))

    def _source_problems(self) -> list[str]:
        if self.source not in source_names():
            return [f"source must be one of {source_names()}, not {self.source!r}"]
        problems = []
        if get_source(self.source).uses_surrogate_fraction:
            if not 0 <= self.surrogate_fraction <= 1:
                problems.append(f"surrogate_fraction must be in [0, 1], not {self.surrogate_fraction}")
        elif self.surrogate_fraction != 0:
            problems.append(f"surrogate_fraction applies to sources that mix real and surrogate blocks, "
                            f"not {self.source!r}")
        if get_source(self.source).uses_surrogate:
            folder = Path(self.surrogate) if self.surrogate else None
            if folder is None:
                problems.append(f"source {self.source!r} needs surrogate: the surrogate model folder")
            elif not (folder / "config.json").is_file():
                problems.append(f"surrogate: no surrogate model folder at {self.surrogate} "
                                "(train one with `casbi-store surrogate train`)")
            if self.surrogate_library < 1:
                problems.append(f"surrogate_library must be >= 1, not {self.surrogate_library}")
            elif self.scheme == "uniform" and self.surrogate_library < self.n_sub_max:
                problems.append(f"surrogate_library ({self.surrogate_library}) must be >= n_sub_max "
                                f"({self.n_sub_max}): a halo's blocks are distinct entries")
        else:
            if self.surrogate:
                problems.append(f"surrogate applies to sources surrogate and mixed, not {self.source!r}")
            if self.surrogate_library != LIBRARY_DEFAULT:
                problems.append(f"surrogate_library applies to sources surrogate and mixed, not "
                                f"{self.source!r}")
        return problems

    @classmethod
    def from_dict(cls, data: dict, where: str = "spec") -> ComposeSpec:
        types = {f.name: f.type for f in fields(cls)}
        unknown = set(data) - set(types)
        if unknown:
            raise ComposeError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(types)}")
        clean = {}
        for key, value in data.items():
            if key == "observation":
                clean[key] = (None if value is None
                              else ObservationSpec.from_dict(value, where=f"{where}: observation"))
                continue
            kind = {"int": int, "float": float, "str": str}[types[key]]
            # YAML 1.1 reads 1.41e9 (no '+' in the exponent) as a string: accept numeric text.
            ok = isinstance(value, kind) or (kind is float and isinstance(value, (int, str)))
            try:
                clean[key] = kind(value) if ok and not isinstance(value, bool) else None
            except ValueError:
                clean[key] = None
            if clean[key] is None:
                raise ComposeError(f"{where}: {key} must be {types[key]}, not {value!r}")
        missing = [f.name for f in fields(cls) if f.name in ("name", "version") and f.name not in clean]
        if missing:
            raise ComposeError(f"{where}: missing required key(s) {', '.join(missing)}")
        try:
            return cls(**clean)
        except ComposeError as exc:
            raise ComposeError(f"{where}: {exc}") from None

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> ComposeSpec:
        """A spec from a YAML file; every problem is a ComposeError naming the file."""
        import yaml

        try:
            data = yaml.safe_load(Path(path).read_text())
        except OSError as exc:
            raise ComposeError(f"{path}: cannot read the spec file ({exc.strerror})") from None
        except yaml.YAMLError as exc:
            raise ComposeError(f"{path}: not valid YAML ({exc})") from None
        if data is None:
            raise ComposeError(f"{path}: empty spec file; a spec needs at least name and version")
        if not isinstance(data, dict):
            raise ComposeError(f"{path}: a spec is a mapping of keys to values, not a "
                               f"{type(data).__name__}")
        return cls.from_dict(data, where=str(path))

    @property
    def validates_on_simulations(self) -> bool:
        """Validation halos from simulations of their own (``VAL_ON_SIMULATIONS``)."""
        return self.val_split in VAL_ON_SIMULATIONS

    def identity(self) -> dict:
        """What makes two specs the same set (the description does not)."""
        d = asdict(self)
        d.pop("description")
        defaults = {"source": "real", "surrogate": "", "surrogate_fraction": 0.0, "observation": None,
                    "val_split": "halos", "simulation_dropout": 0.0, "mass_tilt": 0.0,
                    "folds": 0, "fold": 0}
        for key, default in defaults.items():  # real sets keep the identity they always had
            if d[key] == default:
                d.pop(key)
        if not get_source(self.source).uses_surrogate:
            d.pop("surrogate_library")
        return d
