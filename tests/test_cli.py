
"""The command line and pipeline files, run as a user would (separate processes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_outside

from casbi_store.cli.config import ConfigError, load_pipeline

CLI = [sys.executable, "-m", "casbi_store.cli"]


def run(*args, cwd=None, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_help_lists_subcommands():
    out = run("--help").stdout
    for cmd in ("mock", "extract", "compose", "train", "tune", "evaluate", "infer", "ls", "plot", "run"):
        assert cmd in out


def test_mock_extract_ls_plot(tmp_path):
    run("mock", tmp_path / "suite", "--preset", "tiny", "--seed", "5", "--n-simulations", "2", "-q")
    out = run("extract", tmp_path / "suite", "--store", tmp_path / "s.zarr", "--workers", "2",
              "-q").stdout
    assert "8 ok, 0 excluded, 0 failed" in out and "dashboard" in out
    listing = run("ls", tmp_path / "s.zarr").stdout
    assert "galaxies     8 from 2 simulations" in listing and "binning      v1" in listing
    run("plot", tmp_path / "s.zarr", "--out", tmp_path / "plots")
    assert (tmp_path / "plots" / "chemical_planes.png").stat().st_size > 10_000
    # fixed binning over the same store is a new binning version
    out = run("extract", tmp_path / "suite", "--store", tmp_path / "s.zarr", "--feh-range", "-4",
              "1", "--ofe-range", "-1", "1", "-q").stdout
    assert "binning        version 2" in out
    assert "earlier    v1" in run("ls", tmp_path / "s.zarr").stdout


def test_clear_errors(tmp_path):
    proc = run("extract", tmp_path / "nowhere", "--store", tmp_path / "s.zarr", check=False)
    assert proc.returncode == 2 and "nowhere" in proc.stderr and "does not exist" in proc.stderr
    proc = run("extract", tmp_path, "--store", tmp_path / "s.zarr", "--feh-range", "1", "0",
               "--ofe-range", "0", "1", check=False)
    assert proc.returncode == 2 and "lo < hi" in proc.stderr
    proc = run("ls", tmp_path / "missing.zarr", check=False)
    assert proc.returncode == 2 and "missing.zarr" in proc.stderr


def test_a_bad_file_is_one_line_and_a_bug_shows_its_traceback(tmp_path, capsys, monkeypatch):
    """Bad input (``CasbiError``) is one line and rc 2; any other exception, here a plain
    ValueError raised inside the ls command as a bug would, leaves ``main`` with its traceback."""
    import casbi_store.store.io as io
    from casbi_store import CasbiError
    from casbi_store.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("mock: {preset: tiny, sed: 3}\n")
    for argv in (["run", str(bad)], ["ls", str(tmp_path / "missing.zarr")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("casbi-store: error: ") and err.count("\n") == 1, err
        assert argv[1] in err
    with pytest.raises(CasbiError):
        load_pipeline(bad)

    def broken(store):
        raise ValueError("an index computed wrongly")

    monkeypatch.setattr(io, "describe_store", broken)
    with pytest.raises(ValueError, match="an index computed wrongly"):
        main(["ls", str(tmp_path)])
    assert "casbi-store: error" not in capsys.readouterr().err


def test_refusals_of_the_extraction_and_the_trainer_are_input_errors(tmp_path, capsys):
    """The extraction's and the trainer's refusals of bad options are ``InputError``s (one line,
    rc 2 from the CLI), not plain ValueErrors the CLI would have to guess about."""
    from casbi_store import InputError
    from casbi_store.cli import main
    from casbi_store.learn.trainer import TrainConfig
    from casbi_store.store.extraction_run import extract_suite

    assert main(["extract", str(tmp_path), "--store", str(tmp_path / "s.zarr"),
                 "--mstar-limit", "-1"]) == 2
    err = capsys.readouterr().err
    assert err == "casbi-store: error: mstar_limit must be positive, not -1.0\n", err
    assert main(["extract", str(tmp_path), "--store", str(tmp_path / "s.zarr"), "-q"]) == 2
    assert "no snapshots found" in capsys.readouterr().err
    assert not (tmp_path / "s.zarr").exists()
    assert main(["validate", str(tmp_path / "s.zarr")]) == 2  # no store there: not "damaged"
    assert "s.zarr: no store there" in capsys.readouterr().err
    with pytest.raises(InputError, match="lr_schedule must be one of"):
        TrainConfig.from_dict({"lr_schedule": "sometimes"})
    with pytest.raises(InputError, match="unknown training option"):
        TrainConfig.from_dict({"epochz": 3})
    with pytest.raises(InputError, match="give one of client, cluster"):
        extract_suite(tmp_path, tmp_path / "s.zarr", client=object(), cluster=object())


def test_pipeline_validation_names_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("mock: {preset: tiny, sed: 3}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: mock: unknown key\(s\) \['sed'\]"):
        load_pipeline(bad)
    bad.write_text("extract: {store: s.zarr, main_halo: biggest, suite: x}\n")
    with pytest.raises(ConfigError, match="main_halo"):
        load_pipeline(bad)
    bad.write_text("extract: {store: s.zarr}\n")
    with pytest.raises(ConfigError, match="needs 'suite'"):
        load_pipeline(bad)
    bad.write_text("extract: {store: s.zarr, suite: x}\n"
                   "train: {models: [{task: theta, set: 'a:v1', out: m, epochz: 3}]}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: train: models\[0\]: unknown training option"):
        load_pipeline(bad)
    bad.write_text("extract: {store: s.zarr, suite: x}\n"
                   "train: {defaults: {lr_schedule: linear}, models: [{task: theta, set: 'a:v1', "
                   "out: m}]}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: train: models\[0\]: lr_schedule must be one "
                                          "of constant, cosine, onecycle, not 'linear'"):
        load_pipeline(bad)
    bad.write_text("extract: {store: s.zarr, suite: x}\n"
                   "train: {models: [{task: thetas, set: 'a:v1', out: m}]}\n")
    with pytest.raises(ConfigError, match="task must be one of"):
        load_pipeline(bad)
    bad.write_text("evaluate: {out: r}\n")
    with pytest.raises(ConfigError, match="evaluate: no models"):
        load_pipeline(bad)
    bad.write_text("extract: {store: s.zarr, suite: x}\nsurrogate: {options: {epochz: 3}}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: surrogate: options: unknown surrogate option"):
        load_pipeline(bad)
    bad.write_text("extract: {store: s.zarr, suite: x}\nsurrogate: {figures: 0}\n")
    with pytest.raises(ConfigError, match="bad.yaml: surrogate: figures must be a positive integer"):
        load_pipeline(bad)
    bad.write_text("surrogate: {out: m}\n")
    with pytest.raises(ConfigError, match="surrogate needs the extract stage's store"):
        load_pipeline(bad)
    repo = Path(__file__).resolve().parents[1]
    for shipped in (repo / "pipelines").glob("*.yaml"):
        load_pipeline(shipped)  # the shipped pipelines validate


def test_run_tiny_pipeline(tmp_path, wheel_venv):
    """The tiny pipeline run by the installed wheel's ``casbi-store`` (conftest.wheel_venv: the
    package as people install it, issue 21), outside the checkout."""
    repo = Path(__file__).resolve().parents[1]
    out = run_outside([wheel_venv.exe, "run", repo / "pipelines" / "tiny.yaml", "-q"], cwd=tmp_path)
    assert "where to look" in out and "excluded_mass" in out
    assert (tmp_path / "tiny-run" / "store.zarr").is_dir()
    assert (tmp_path / "tiny-run" / "plots" / "trends.png").exists()
    assert "model theta" in out and "report" in out
    assert (tmp_path / "tiny-run" / "report" / "report.html").stat().st_size > 50_000
    assert (tmp_path / "tiny-run" / "models" / "theta" / "ensemble.json").is_file()
    page = (tmp_path / "tiny-run" / "report" / "report.html").read_text()
    assert "Surrogate simulator: validation on held-out simulations" in page
    assert page.split("Surrogate simulator")[1].count("data:image/png") >= 2  # planes, strip, ...
    assert "median JSD surrogate" in out  # the surrogate stage's one-line summary
    # the external condition: its own suite and store, judged in the targets table
    assert (tmp_path / "tiny-run" / "external" / "store.zarr").is_dir()
    metrics = json.loads((tmp_path / "tiny-run" / "report" / "metrics.json").read_text())
    assert "tiny_external" in metrics["conditions"]["external"]["source"]
    assert metrics["conditions"]["external"]["targets"]["r2_log10_mstar_1"]["target"] == [">=", 0.8]
    assert "Can the answer be trusted?" in page
    kept = [tmp_path / "tiny-run" / p for p in ("models/surrogate/model.pt", "surrogate/validation.json")]
    stamps = [p.stat().st_mtime_ns for p in kept]
    again = run_outside([wheel_venv.exe, "run", repo / "pipelines" / "tiny.yaml", "-q"], cwd=tmp_path)
    assert "0 ok, 0 excluded, 0 failed" in again  # resumable: nothing new to do
    assert [p.stat().st_mtime_ns for p in kept] == stamps  # the surrogate and its validation kept


def test_every_command_module_registers(capsys):
    """A command is one module of casbi_store/cli/: each is in COMMANDS, registers its
    subcommand with a handler, and --help lists them all."""
    import casbi_store.cli as cli

    folder = Path(cli.__file__).parent
    modules = {p.stem for p in folder.glob("*.py")} - {"__init__", "__main__", "common", "config"}
    ours = [m for m in cli.COMMANDS if m.__name__.startswith("casbi_store.cli.")]
    assert modules == {m.__name__.rsplit(".", 1)[1] for m in ours}
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["--help"])
    listing = capsys.readouterr().out
    names = [m.__name__.rsplit(".", 1)[1].replace("_", "-") for m in ours]
    for name in names:
        assert f"\n    {name} " in listing, name
        args = cli.build_parser().parse_args([name, *{
            "mock": ["x"], "extract": ["x", "--store", "s"], "compose": ["s", "--spec", "y"],
            "train": ["s", "--set", "a:v1", "--task", "theta", "--out", "m"],
            "tune": ["s", "--set", "a:v1", "--task", "theta", "--out", "m", "--trials", "1"],
            "infer": ["m"], "observe": ["t", "--binning", "s", "--out", "o.nc"],
            "evaluate": ["m"], "run": ["p"], "cluster-script": ["p"],
            "survey": ["s", "--set", "a:v1", "--models", "m", "--out", "o"]}.get(name, ["s"])])
        module = ours[names.index(name)]
        assert args.func is module.run  # the handler sits with its parser


def test_the_pipeline_runner_builds_no_argparse_namespace():
    """The runner calls the commands' plain functions; no module fakes a parsed command line."""
    import ast

    import casbi_store.cli as cli

    for path in Path(cli.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "attr", getattr(node.func, "id", ""))
                assert name != "Namespace", f"{path.name}:{node.lineno} builds a Namespace"
    runner = (Path(cli.__file__).parent / "run.py").read_text()
    body = runner.split("def run_pipeline", 1)[1].split("\ndef run(", 1)[0]
    assert "args" not in body and "argparse" not in body


def test_cluster_script_prints_the_job_script(tmp_path, monkeypatch, capsys):
    from casbi_store.cli import main

    monkeypatch.setenv("USER", "astro")
    repo = Path(__file__).resolve().parents[1]
    assert main(["cluster-script", str(repo / "pipelines" / "slurm.yaml")]) == 0
    script = capsys.readouterr().out
    directives = {line[len("#SBATCH"):].strip() for line in script.splitlines()
                  if line.startswith("#SBATCH")}
    assert {"-p cpu", "-A nihao", "--cpus-per-task=8", "-t 04:00:00"} <= directives
    assert "source $HOME/casbi/.venv/bin/activate" in script and "--nworkers 8" in script
    local = tmp_path / "local.yaml"
    local.write_text("extract: {suite: s}\ncluster: {kind: local, workers: 2}\n")
    assert main(["cluster-script", str(local)]) == 2
    err = capsys.readouterr().err
    assert "local.yaml: cluster: kind 'local' submits no job script" in err
    assert "Traceback" not in err
    none = tmp_path / "none.yaml"
    none.write_text("extract: {suite: s}\n")
    assert main(["cluster-script", str(none)]) == 2
    assert "none.yaml: no cluster section" in capsys.readouterr().err


def test_pipeline_mock_physics_is_validated_at_load(tmp_path):
    from casbi_store.mock import Physics

    p = tmp_path / "p.yaml"
    p.write_text("mock: {preset: tiny, physics: {ia_min_delay: 0.5, y_fe_ia: 0.0025}}\n")
    assert load_pipeline(p).mock.physics == Physics(ia_min_delay=0.5, y_fe_ia=0.0025)
    assert load_pipeline(tmp_path / "p.yaml").mock.physics.changes() == {
        "ia_min_delay": 0.5, "y_fe_ia": 0.0025}
    for mock, message in [
            ("{preset: tiny, physics: {ia_delay: 0.5}}", r"physics: unknown key\(s\) \['ia_delay'\]"),
            ("{preset: tiny, physics: {dtd_slope: 0.5}}", r"physics: dtd_slope must lie in"),
            ("{preset: tiny, physics: [0.5]}", r"physics: expected a mapping"),
            ("{preset: huge}", r"preset must be one of")]:
        p.write_text(f"mock: {mock}\n")
        with pytest.raises(ConfigError, match=rf"p.yaml: mock: {message}"):
            load_pipeline(p)


def test_pipeline_mock_sizes_reach_the_suite_spec(tmp_path):
    from casbi_store.cli.mock import suite_spec

    p = tmp_path / "p.yaml"
    p.write_text("mock: {preset: demo, seed: 3, n_simulations: 12, n_star_max: 2000, n_dm: 500, "
                 "steps: [256, 1024]}\n")
    m = load_pipeline(p).mock
    spec = suite_spec(m.preset, seed=m.seed, defects=m.defects, physics=m.physics, **m.sizes())
    assert (spec.n_simulations, spec.n_star_max, spec.n_dm_final, spec.steps) == (12, 2000, 500,
                                                                                  (256, 1024))
    curve = Path(__file__).parent.parent / "pipelines" / "learning_curve"
    pipes = {f.stem: load_pipeline(f) for f in sorted(curve.glob("*.yaml"))}
    assert {k: v.mock.n_simulations for k, v in pipes.items()} == {
        "external": 48, "sims012": 12, "sims024": 24, "sims048": 48, "sims096": 96, "sims192": 192}
    assert {v.evaluate.against for k, v in pipes.items() if k != "external"} == {
        "../external/store.zarr:lc_external:v1"}  # every size judged on the same suite
    p.write_text("mock: {preset: demo}\n")
    m = load_pipeline(p).mock
    assert suite_spec(m.preset, **m.sizes()).steps == tuple(range(64, 1025, 64))  # the preset's
    for mock, message in [("{n_simulations: 0}", "n_simulations must be a positive integer"),
                          ("{n_star_max: 1.5}", "n_star_max must be a positive integer"),
                          ("{steps: [512, 256]}", "steps must be increasing integers"),
                          ("{steps: [2048]}", "steps must be increasing integers")]:
        p.write_text(f"mock: {mock}\n")
        with pytest.raises(ConfigError, match=rf"p.yaml: mock: {message}"):
            load_pipeline(p)


def test_pipeline_tune_stage_and_device_override(tmp_path):
    from casbi_store.cli.run import on_device

    seed = load_pipeline(Path(__file__).parent.parent / "pipelines" / "seed.yaml")
    assert [(s.model.task, s.trials, s.search) for s in seed.tune.studies] == [
        ("nsub_classifier", 20, ("learning_rate", "batch_size")),
        ("theta", 20, ("learning_rate", "batch_size"))]
    assert [(m.tuned, m.config.ensemble, m.config.num_transforms, m.config.hidden_features,
             m.config.embedding_dim) for m in seed.train.models] == [
        ("tune/nsub_classifier", 4, 10, 100, 128), ("tune/theta", 4, 10, 100, 128)]
    moved = on_device(seed, "cpu")  # the CPU path still works where CUDA is refused
    assert {m.config.device for m in moved.train.models} == {"cpu"}
    assert {s.model.config.device for s in moved.tune.studies} == {"cpu"}
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="torch sees no CUDA device"):
            on_device(seed, "cuda")
    p = tmp_path / "p.yaml"
    base = "extract: {suite: s}\ntune: {studies: [{task: theta, set: 's:v1', out: t, "
    for study, message in [("trials: 0}]}", r"studies\[0\]: trials must be an integer >= 1"),
                           ("trials: 2, search: [depth]}]}", r"studies\[0\]: search: depth not "
                                                             r"tuned for task 'theta'"),
                           ("trials: 2, epochs: 0}]}", r"studies\[0\]: epochs, batch_size")]:
        p.write_text(base + study + "\n")
        with pytest.raises(ConfigError, match=rf"p.yaml: tune: {message}"):
            load_pipeline(p)


def test_evaluate_against_option_is_parsed():
    from casbi_store.cli.evaluate import parse_against

    assert parse_against(None) is None
    assert parse_against("ext.zarr") == ("ext.zarr", None, None)
    assert parse_against("ext.zarr:s:v2") == ("ext.zarr", "s", "v2")
    assert parse_against("s3://bucket/ext.zarr:s") == ("s3://bucket/ext.zarr", "s", None)
    with pytest.raises(ValueError, match="STORE"):
        parse_against("a:b:c:d")
