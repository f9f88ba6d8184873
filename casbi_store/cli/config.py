"""Pipeline configuration: a YAML file, typed and validated once, here at the edge.

Example (``pipelines/demo.yaml``)::

    workdir: demo            # relative paths below are inside it
    mock: {preset: demo, seed: 42, defects: true,
           physics: {ia_min_delay: 0.5}}          # optional: casbi_store.mock.Physics fields
    extract: {store: store.zarr, main_halo: first, mstar_limit: 6.0e9,
              binning: {method: percentile, percentiles: [0.01, 99.99]}}
    cluster: {kind: local, workers: 2}   # or address / slurm / pbs (casbi_store.store.cluster)
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from casbi_store import CasbiError, InputError
from casbi_store.mock import PRESETS, Physics
from casbi_store.store.binning import BinningSpec
from casbi_store.store.cluster import ClusterSpec
from casbi_store.store.extract import ExtractionSettings


class ConfigError(CasbiError, ValueError):
    """A pipeline file that does not validate; the message names the file and the key."""


@dataclass(frozen=True)
class MockStage:
    preset: str = "demo"
    seed: int = 0
    defects: bool = False
    out: str = "suite"
    workers: int | None = None
    physics: Physics | None = None  # chemical-evolution physics (None: the fiducial)
    n_simulations: int | None = None  # size overrides (None: the preset's)
    n_star_max: int | None = None
    n_dm: int | None = None
    steps: tuple[int, ...] | None = None  # snapshot steps of 1024 (None: the preset's)

    def sizes(self) -> dict:
        """The size overrides ``cli.mock.suite_spec`` takes (None: the preset's)."""
        return {"n_simulations": self.n_simulations, "n_star_max": self.n_star_max,
                "n_dm_final": self.n_dm, "steps": tuple(self.steps) if self.steps else None}


@dataclass(frozen=True)
class ExtractStage:
    store: str = "store.zarr"
    suite: str | None = None  # default: the mock stage's output
    scheduler: str | None = None
    workers: int | None = None
    main_halo: str = "first"
    mstar_limit: float = 6e9
    binning: dict = field(default_factory=dict)

    def settings(self) -> ExtractionSettings:
        return ExtractionSettings(main_halo=self.main_halo, mstar_limit=float(self.mstar_limit))

    def binning_spec(self) -> BinningSpec:
        return BinningSpec.from_dict(self.binning) if self.binning else BinningSpec()

    def cluster_spec(self) -> ClusterSpec:
        """Where this stage runs without a pipeline ``cluster:`` section."""
        return ClusterSpec.from_options(self.scheduler, self.workers)


@dataclass(frozen=True)
class ComposeStage:
    catalog: str | None = None  # intake catalog to register the sets in (relative to workdir)
    sets: tuple = ()  # ComposeSpec objects

    @classmethod
    def parse(cls, data: dict, where: str) -> ComposeStage:
        from casbi_store.compose import ComposeError, ComposeSpec

        if not isinstance(data, dict) or set(data) - {"catalog", "sets"}:
            raise ConfigError(f"{where}: expected keys 'catalog' and 'sets'")
        specs = []
        for i, item in enumerate(data.get("sets") or []):
            try:
                specs.append(ComposeSpec.from_dict(item, where=f"{where}: sets[{i}]"))
            except ComposeError as exc:
                raise ConfigError(str(exc)) from exc
        return cls(catalog=data.get("catalog"), sets=tuple(specs))


@dataclass(frozen=True)
class ModelSpec:
    """One model the train stage fits: a task on a published set, into a model folder
    (``tuned``: a tune folder whose best trial's options replace the config's, read when the
    stage runs)."""

    task: str
    set: str
    version: str
    out: str
    config: object  # trainer.TrainConfig
    tuned: str | None = None


def _model_specs(data: dict, where: str, extra: tuple[str, ...] = ()) -> list[tuple[dict, ModelSpec]]:
    """The ``models``/``studies`` list of a train or tune stage: each item's own keys
    (``extra``, e.g. ``trials``) and its ModelSpec with ``defaults`` under its options."""
    from casbi_store.learn.tasks import get_task
    from casbi_store.learn.trainer import TrainConfig

    key = "studies" if "trials" in extra else "models"
    if not isinstance(data, dict) or set(data) - {"defaults", key}:
        raise ConfigError(f"{where}: expected keys 'defaults' (training options for every "
                          f"{key[:-1] if key == 'models' else 'study'}) and '{key}' (a list)")
    defaults = data.get("defaults") or {}
    out = []
    for i, item in enumerate(data.get(key) or []):
        here = f"{where}: {key}[{i}]"
        if not isinstance(item, dict) or not {"task", "set", "out"} <= set(item):
            raise ConfigError(f"{here}: needs 'task', 'set' (NAME:VERSION) and 'out'")
        own = ("task", "set", "out", "tuned", *extra)
        options = {k: v for k, v in item.items() if k not in own}
        name, _, version = str(item["set"]).partition(":")
        try:
            get_task(item["task"])
            if not version:
                raise InputError(f"set must be NAME:VERSION, not {item['set']!r}")
            cfg = TrainConfig.from_dict({**defaults, **options})
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{here}: {exc}") from exc
        tuned = item.get("tuned")
        if tuned is not None and not isinstance(tuned, str):
            raise ConfigError(f"{here}: tuned must be a tune folder (a path), not {tuned!r}")
        out.append(({k: item[k] for k in extra if k in item},
                    ModelSpec(item["task"], name, version, str(item["out"]), cfg, tuned)))
    return out


@dataclass(frozen=True)
class TrainStage:
    models: tuple = ()  # ModelSpec objects

    @classmethod
    def parse(cls, data: dict, where: str) -> TrainStage:
        return cls(models=tuple(spec for _, spec in _model_specs(data, where)))


@dataclass(frozen=True)
class Study:
    """One optuna study of the tune stage: ``model`` the task, set, tune folder and base
    options; ``trials`` complete trials to reach; ``search`` the options searched."""

    model: ModelSpec
    trials: int
    search: tuple[str, ...] | None = None


@dataclass(frozen=True)
class TuneStage:
    studies: tuple = ()  # Study objects

    @classmethod
    def parse(cls, data: dict, where: str) -> TuneStage:
        from casbi_store.learn.tune import tuned_parameters

        studies = []
        for i, (own, spec) in enumerate(_model_specs(data, where, extra=("trials", "search"))):
            trials, search = own.get("trials"), own.get("search")
            if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
                raise ConfigError(f"{where}: studies[{i}]: trials must be an integer >= 1, "
                                  f"not {trials!r}")
            try:
                search = tuple(search) if search is not None else None
                tuned_parameters(spec.task, search)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{where}: studies[{i}]: {exc}") from exc
            studies.append(Study(spec, trials, search))
        return cls(studies=tuple(studies))


@dataclass(frozen=True)
class SurrogateStage:
    """Train a surrogate on the extract stage's store and validate it on its held-out
    simulations; the evaluate stage's report shows the validation (issue 9)."""

    out: str = "models/surrogate"  # model folder
    validation: str = "surrogate"  # validation.json and figures
    options: dict = field(default_factory=dict)  # casbi_store.surrogate.SurrogateConfig fields
    density_stars: int = 10_000
    figures: int = 4
    seed: int = 0

    def config(self):
        """The validated ``SurrogateConfig`` (raises ValueError naming the option)."""
        from casbi_store.surrogate.model import SurrogateConfig

        return SurrogateConfig.from_dict(dict(self.options))

    @classmethod
    def parse(cls, data, where: str) -> SurrogateStage:
        stage = _build(cls, data, where)
        if not isinstance(stage.options, dict):
            raise ConfigError(f"{where}: options must be a mapping of SurrogateConfig fields")
        try:
            stage.config()
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: options: {exc}") from exc
        for key in ("density_stars", "figures"):
            value = getattr(stage, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{where}: {key} must be a positive integer, not {value!r}")
        return stage


@dataclass(frozen=True)
class EvaluateStage:
    models: tuple = ()  # model folders; default: every model of the train stage
    split: str = "test"
    out: str = "report"
    halos: int = 300
    samples: int = 200
    seed: int = 0
    against: str | None = None  # STORE[:SET[:VERSION]] (relative to workdir): an external condition


@dataclass(frozen=True)
class SurveyStage:
    """Mock survey tables of a set's held-out halos through observe -> infer, and the truth's
    coverage (``casbi-store survey``; ``observation``: the survey, default the set's own)."""

    set: str  # NAME:VERSION whose split's halos are observed
    models: tuple = ()  # model folders; default: every model of the train stage
    split: str = "test"
    tables: int = 20
    observation: dict | None = None
    samples: int = 500
    ranks: int = 3
    seed: int = 0
    out: str = "survey"

    @classmethod
    def parse(cls, data, where: str, train: TrainStage | None) -> SurveyStage:
        from casbi_store.compose.sources.observation import ObservationSpec

        models = (data.get("models") if isinstance(data, dict) else None) or tuple(
            m.out for m in (train.models if train else ()))
        stage = _build(cls, {**data, "models": tuple(models)} if isinstance(data, dict) else data,
                       where)
        if ":" not in stage.set:
            raise ConfigError(f"{where}: set must be NAME:VERSION, not {stage.set!r}")
        if not stage.models:
            raise ConfigError(f"{where}: no models (list them, or add a train stage)")
        if min(stage.tables, stage.samples, stage.ranks) < 1:
            raise ConfigError(f"{where}: tables, samples and ranks must be >= 1")
        if stage.observation is not None:
            try:
                ObservationSpec.from_dict(stage.observation, where=f"{where}: observation")
            except ValueError as exc:
                raise ConfigError(str(exc)) from exc
        return stage


@dataclass(frozen=True)
class ExternalStage:
    """An external condition: a second mock suite of the same physics (another seed: other
    galaxies, other halo masses), extracted with the main store's bin edges, and a set of its
    halos that the evaluate stage judges as ``external`` (galaxies no model trained or was
    selected on). Its folder ``out`` (relative to workdir) holds ``suite/`` and ``store.zarr``."""

    mock: MockStage
    set: object  # a compose.ComposeSpec (test split: the halos judged)
    out: str = "external"

    @classmethod
    def parse(cls, data, where: str) -> ExternalStage:
        from casbi_store.compose import ComposeError, ComposeSpec

        if not isinstance(data, dict) or set(data) - {"mock", "set", "out"} or not {
                "mock", "set"} <= set(data):
            raise ConfigError(f"{where}: expected keys 'mock' and 'set' (and optionally 'out')")
        mock = _mock_stage(data["mock"], f"{where}: mock")
        try:
            spec = ComposeSpec.from_dict(data["set"], where=f"{where}: set")
        except ComposeError as exc:
            raise ConfigError(str(exc)) from exc
        out = data.get("out", "external")
        if not isinstance(out, str) or not out:
            raise ConfigError(f"{where}: out must be a folder name, not {out!r}")
        return cls(mock=mock, set=spec, out=out)

    def against(self, workdir: Path) -> tuple:
        """``(store, set, version)`` for ``evaluate``'s external condition."""
        return (workdir / self.out / "store.zarr", self.set.name, self.set.version)


@dataclass(frozen=True)
class Pipeline:
    workdir: Path
    mock: MockStage | None
    extract: ExtractStage | None
    source: Path
    compose: ComposeStage | None = None
    train: TrainStage | None = None
    tune: TuneStage | None = None
    evaluate: EvaluateStage | None = None
    cluster: ClusterSpec | None = None  # where extract and compose run (default: LocalCluster)
    surrogate: SurrogateStage | None = None  # after extract, before compose (sets may use it)
    survey: SurveyStage | None = None  # mock survey tables through observe -> infer
    external: ExternalStage | None = None  # another suite, judged as the external condition

    def path(self, p: str) -> Path:
        return self.workdir / p


def _build(cls, data, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(names)}")
    try:
        return cls(**data)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _mock_stage(data, where: str) -> MockStage:
    """The mock stage, its ``physics`` mapping built into a validated ``mock.Physics``."""
    stage = _build(MockStage, data, where)
    if stage.preset not in PRESETS:
        raise ConfigError(f"{where}: preset must be one of {sorted(PRESETS)}, not {stage.preset!r}")
    if stage.physics is not None:
        stage = dataclasses.replace(stage, physics=_build(Physics, stage.physics, f"{where}: physics"))
    for key in ("n_simulations", "n_star_max", "n_dm"):
        value = getattr(stage, key)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ConfigError(f"{where}: {key} must be a positive integer, not {value!r}")
    if stage.steps is not None:
        steps = stage.steps
        if (not isinstance(steps, list | tuple) or not steps
                or not all(isinstance(v, int) and 0 < v <= 1024 for v in steps)
                or list(steps) != sorted(set(steps))):
            raise ConfigError(f"{where}: steps must be increasing integers in 1..1024, not {steps!r}")
        stage = dataclasses.replace(stage, steps=tuple(steps))
    return stage


def load_pipeline(path: str | Path) -> Pipeline:
    """Read and validate a pipeline YAML file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read pipeline file: {exc}") from exc
    allowed = {"workdir", "mock", "extract", "compose", "tune", "train", "evaluate", "cluster",
               "surrogate", "survey", "external"}
    if not isinstance(data, dict) or set(data) - allowed:
        raise ConfigError(f"{path}: top-level keys must be among {sorted(allowed)}")
    mock = _mock_stage(data["mock"], f"{path}: mock") if "mock" in data else None
    extract = _build(ExtractStage, data["extract"], f"{path}: extract") if "extract" in data else None
    if extract is not None:
        try:  # validate the typed settings now, not half-way through a run
            extract.settings()
            extract.binning_spec()
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{path}: extract: {exc}") from exc
        if extract.suite is None and mock is None:
            raise ConfigError(f"{path}: extract needs 'suite' when there is no mock stage")
    cluster = _build(ClusterSpec, data["cluster"], f"{path}: cluster") if "cluster" in data else None
    if cluster is not None and extract is not None and (extract.scheduler or extract.workers):
        raise ConfigError(f"{path}: extract: 'scheduler'/'workers' and a 'cluster' section both say "
                          "where to run: keep the cluster section")
    compose = ComposeStage.parse(data["compose"], f"{path}: compose") if "compose" in data else None
    if compose is not None and extract is None:
        raise ConfigError(f"{path}: compose needs the extract stage's store")
    surrogate = (SurrogateStage.parse(data["surrogate"], f"{path}: surrogate")
                 if "surrogate" in data else None)
    if surrogate is not None and extract is None:
        raise ConfigError(f"{path}: surrogate needs the extract stage's store")
    train = TrainStage.parse(data["train"], f"{path}: train") if "train" in data else None
    if train is not None and extract is None:
        raise ConfigError(f"{path}: train needs the extract stage's store")
    tune = TuneStage.parse(data["tune"], f"{path}: tune") if "tune" in data else None
    if tune is not None and extract is None:
        raise ConfigError(f"{path}: tune needs the extract stage's store")
    evaluate = None
    if "evaluate" in data:
        evaluate = _build(EvaluateStage, {**data["evaluate"], "models": tuple(
            data["evaluate"].get("models") or (m.out for m in (train.models if train else ())))},
                          f"{path}: evaluate")
        if not evaluate.models:
            raise ConfigError(f"{path}: evaluate: no models (list them, or add a train stage)")
    survey = None
    if "survey" in data:
        survey = SurveyStage.parse(data["survey"], f"{path}: survey", train)
        if extract is None:
            raise ConfigError(f"{path}: survey needs the extract stage's store")
    external = (ExternalStage.parse(data["external"], f"{path}: external")
                if "external" in data else None)
    if external is not None and extract is None:
        raise ConfigError(f"{path}: external needs the extract stage's store (its bin edges)")
    if external is not None and evaluate is not None and evaluate.against:
        raise ConfigError(f"{path}: evaluate: 'against' and an 'external' section both name the "
                          "external condition: keep one")
    workdir = Path(os.path.expandvars(os.path.expanduser(str(data.get("workdir", ".")))))
    return Pipeline(workdir=workdir, mock=mock, extract=extract,
                    source=path, compose=compose, train=train, tune=tune, evaluate=evaluate,
                    cluster=cluster, surrogate=surrogate, survey=survey, external=external)
