"""docs/STORE.md documents every name that casbi_store/store/schema.py defines."""

from pathlib import Path

from casbi_store.store import schema as S

DOC = (Path(__file__).resolve().parents[1] / "docs" / "STORE.md").read_text()


def test_every_schema_name_is_documented():
    names = [f.name for f in (*S.GALAXY_FIELDS, *S.STAR_FIELDS, *S.HISTOGRAM_FIELDS,
                              *S.ERROR_FIELDS, S.FEH_EDGES, S.OFE_EDGES, S.FEH_CENTERS,
                              S.OFE_CENTERS)]
    names += [S.GALAXIES, S.STARS, S.HISTOGRAMS, S.ERRORS, S.DIM_GALAXY, S.DIM_STAR, S.DIM_ERROR,
              S.DIM_FEH_EDGE, S.DIM_OFE_EDGE, S.ATTR_SCHEMA_VERSION, S.ATTR_BINNING,
              S.ATTR_BINNING_HISTORY, S.ATTR_BINNING_VERSION, S.ATTR_PROVENANCE,
              S.ATTR_EXTRACTION, S.TRAINING_SETS, S.ATTR_VERSIONS, S.ATTR_TRAINING_SET, *S.SPLITS]
    names += [f.name for f in S.TRAINING_FIELDS]
    missing = [n for n in names if f"`{n}`" not in DOC]
    assert not missing
    for f in (*S.GALAXY_FIELDS, *S.STAR_FIELDS, *S.ERROR_FIELDS):
        assert f"| `{f.name}` | {f.dtype} |" in DOC, f.name


def test_error_kinds_are_documented():
    from casbi_store.store.extract import ErrorKind

    assert not [k for k in ErrorKind if f"`{k.value}`" not in DOC]


# ---- the docs site (issue 21): names and commands in the pages resolve -----------------------

import importlib  # noqa: E402
import re  # noqa: E402
import shlex  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted(p for p in [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]
               if "_build" not in p.parts and "reference" not in p.parts)


def _resolve(dotted: str) -> object:
    """The object a dotted ``casbi_store.…`` name names: the longest importable module, then
    attributes."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)


def test_every_casbi_store_name_in_the_pages_exists():
    """``casbi_store.x.y`` in prose and ``from casbi_store.x import a, b`` in code, in the README
    and every docs page, name something that exists (the package was reorganised once)."""
    missing = []
    for page in PAGES:
        text = page.read_text()
        names = set(re.findall(r"\bcasbi_store(?:\.[A-Za-z_]\w*)+", text))
        for module, imported in re.findall(r"from (casbi_store[\w.]*) import ([\w, ]+)", text):
            names |= {f"{module}.{n.strip()}" for n in imported.split(",") if n.strip()}
        for name in sorted(names):
            try:
                _resolve(name.rstrip("."))
            except (ImportError, AttributeError):
                missing.append(f"{page.relative_to(ROOT)}: {name}")
    assert not missing


def _commands(text: str) -> list[str]:
    """The ``casbi-store ...`` lines of the page's bash blocks (continuations joined, comments
    dropped)."""
    out = []
    for block in re.findall(r"```(?:bash|sh|console)\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip().removeprefix("$ ")
            if line.startswith("casbi-store "):
                out.append(line)
    return out


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_command_in_the_pages_parses(page):
    """Every ``casbi-store`` command shown in a bash block parses with today's options (the
    tutorials run theirs; these are parsed, not run)."""
    from casbi_store.cli import build_parser

    parser = build_parser()
    for line in _commands(page.read_text()):
        argv = shlex.split(line)[1:]
        try:
            parser.parse_args(argv)
        except SystemExit as exc:  # --version and --help exit 0
            if exc.code:
                pytest.fail(f"{page.name}: `{line}` does not parse")


# ---- the generated references cover the code (docs/_ext/casbi_reference.py) -------------------

def _reference():
    import sys

    sys.path.insert(0, str(ROOT / "docs" / "_ext"))
    try:
        import casbi_reference
    finally:
        sys.path.pop(0)
    return casbi_reference


def _parsers(parser, prog="casbi-store"):
    """(prog, parser) of the command line and every subcommand, recursively."""
    import argparse

    yield prog, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{prog} {name}")


def test_cli_reference_has_every_command_and_option():
    from casbi_store.cli import build_parser

    text = _reference().cli_reference()
    missing = []
    for prog, parser in _parsers(build_parser()):
        if f"## `{prog}`" not in text:
            missing.append(prog)
        missing += [f"{prog} {o}" for a in parser._actions for o in a.option_strings
                    if o not in ("-h", "--help") and f"`{o}`" not in text]
    assert not missing
    assert "%%" not in text  # help strings as --help prints them


def test_pipeline_reference_has_every_key_load_pipeline_accepts(tmp_path):
    """The top-level keys are the ones ``load_pipeline`` allows (read from its own error), and
    every field of every stage's class has a row."""
    import dataclasses

    from casbi_store.cli.config import ConfigError, load_pipeline

    bad = tmp_path / "bad.yaml"
    bad.write_text("no_such_stage: {}\n")
    with pytest.raises(ConfigError) as err:
        load_pipeline(bad)
    allowed = set(re.findall(r"'(\w+)'", str(err.value).split("among", 1)[1]))
    ref = _reference()
    text = ref.pipeline_reference()
    assert {key for key, _, _ in ref.pipeline_sections()} | {"workdir"} == allowed
    rows = [f"| `{f.name}` |" for _, _, tables in ref.pipeline_sections() for _, cls, skip, _ in tables
            for f in dataclasses.fields(cls) if f.name not in skip]
    assert not [r for r in rows if r not in text]
    assert "| `representation` |" in text and "| `kind` |" in text  # TrainConfig, ClusterSpec


def test_api_reference_documents_the_public_api_and_every_stage():
    import casbi_store

    ref = _reference()
    text = ref.api_reference()
    for name in casbi_store.__all__:
        if not name.startswith("__"):
            module, attribute = casbi_store._API.get(name, ("casbi_store", name))
            assert f":: {module}.{attribute}" in text, name
    for stage in ref.STAGES:
        assert f".. py:module:: casbi_store.{stage}" in text
        assert ref.stage_modules(stage) and all(f".. automodule:: {m}" in text
                                                for m in ref.stage_modules(stage))


# ---- the README's commands run (issue 21: "the README's commands ... run in CI") ---------------

# How the README's one-liners run here: in a temporary folder, on the tiny preset, with sizes a
# test can afford; every other word of each line as the README prints it.
README_WORDS = {"--preset demo": "--preset tiny",            # the demo suite takes minutes
                "SUITE": "demo/suite", "S.zarr": "demo/again.zarr",
                "nsub_uniform:v2": "nsub_uniform_seed:v1",  # the set the README's compose line makes
                "nsub_uniform:v3": "nsub_uniform_seed:v1"}
README_EXTRA = {"train": ["--epochs", "1", "--batch-size", "64", "--hidden-features", "8",
                          "--num-transforms", "1", "--embedding-dim", "8", "--conv-channels", "4"],
                "evaluate": ["--halos", "20", "--samples", "20"]}
# the README's lines that run elsewhere, and where
README_ELSEWHERE = {"casbi-store run pipelines/demo.yaml":
                    "tests/test_cli.py::test_run_tiny_pipeline runs the same chain, pipelines/tiny.yaml"}


def _readme_survey_table(path: Path) -> None:
    """An APOGEE-like allStar table: [Fe/H], [O/Fe] and a signal-to-noise column."""
    import numpy as np
    from astropy.table import Table

    rng = np.random.default_rng(0)
    Table({"FE_H": rng.normal(-1.0, 0.5, 3000), "O_FE": rng.normal(0.15, 0.15, 3000),
           "SNR": rng.uniform(20, 300, 3000)}).write(path)


def test_the_readme_one_liners_and_python_run(tmp_path, monkeypatch, capsys, dask_client):
    """Every ``casbi-store`` line of the README's one-liners, in order, in a temporary folder
    (README_WORDS, README_EXTRA: the tiny preset, small networks), then its Python block; each
    line exits 0 and leaves what it says it makes."""
    import shutil

    import yaml

    from casbi_store.cli import main

    readme = (ROOT / "README.md").read_text()
    lines = _commands(readme.split("## One-liners", 1)[1])
    assert len(lines) >= 10 and set(README_ELSEWHERE) <= set(lines)
    monkeypatch.chdir(tmp_path)
    shutil.copytree(ROOT / "pipelines", "pipelines")
    spec = Path("pipelines/specs/nsub_uniform_seed.yaml")  # the seed's set at a tiny store's size
    spec.write_text(yaml.safe_dump({**yaml.safe_load(spec.read_text()), "n_sub_max": 6,
                                    "train_per_n": 30, "test_per_n": 6}))
    _readme_survey_table(Path("allStar.fits"))
    words = {**README_WORDS, "tcp://host:8786": dask_client.scheduler.address}
    ran = []
    for line in lines:
        if line in README_ELSEWHERE:
            continue
        for old, new in words.items():
            line = line.replace(old, new)
        argv = shlex.split(line)[1:]
        argv += README_EXTRA.get(argv[0], [])
        capsys.readouterr()
        assert main(argv) == 0, line
        ran.append((argv[0], capsys.readouterr().out))
    out = dict(ran)
    assert [c for c, _ in ran].count("extract") == 2 and len(ran) == len(lines) - len(README_ELSEWHERE)
    assert "galaxies" in out["ls"] and "#SBATCH" in out["cluster-script"]
    for made in ("demo/suite", "demo/store.zarr", "demo/again.zarr", "demo/plots/chemical_planes.png",
                 "catalogs/casbi.yaml", "models/nsub_classifier", "models/theta/ensemble.json",
                 "report/report.html", "obs.nc", "posterior.nc"):
        assert Path(made).exists(), made

    block = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    block = block.replace('nsub_uniform(version="v2"', 'nsub_uniform_seed(version="v1"')
    names: dict = {}
    exec(compile(block, "README.md", "exec"), names)
    assert names["ds"].sizes["halo"] > 0 and names["post"] is not None
