"""The intake catalog of a store: drivers, parameter validation, relative paths, HTTP without listing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import intake
import numpy as np
import pytest
import xarray as xr
import yaml
import zarr
from conftest import consolidate_whole_store, serve_http

from casbi_store.compose.catalog import read_registry, sorted_versions, update_catalog, write_catalog
from casbi_store.compose.intake_source import GalaxiesSource, TrainingSetSource

# intake 2.0.9 warns about shell commands for every string parameter, shell() or not
pytestmark = pytest.mark.filterwarnings("ignore:Shell command not executed:UserWarning")

SET = "nsub_uniform"
COUNTS = {"v1": {"train": 6, "val": 2, "test": 3}, "v2": {"train": 5, "val": 3, "test": 4}}
PARAMS = [{"name": "mstar", "units": "Msun"}, {"name": "mdm", "units": "Msun"},
          {"name": "tau", "units": "Gyr"}]
ARRAYS = ("x", "n_sub", "theta", "members")


def _split(rng: np.random.Generator, n: int) -> xr.Dataset:
    """A small but valid training-set split: n composed halos of 1-3 sub-galaxies."""
    n_sub = rng.integers(1, 4, n).astype(np.int32)
    block = int(n_sub.max())
    theta = np.full((n, block, 3), np.nan)
    members = np.full((n, block), -1, dtype=np.int64)
    for i, k in enumerate(n_sub):
        theta[i, :k] = rng.uniform(1.0, 10.0, (k, 3))
        members[i, :k] = rng.choice(50, k, replace=False)
    centres = np.linspace(-2.0, 0.5, 64)
    return xr.Dataset(
        {"x": (("halo", "feh_bin", "ofe_bin"), rng.integers(0, 50, (n, 64, 64)).astype(np.int32)),
         "n_sub": ("halo", n_sub),
         "theta": (("halo", "block", "param"), theta, {"units": ["Msun", "Msun", "Gyr"]}),
         "members": (("halo", "block"), members)},
        coords={"param": ["mstar", "mdm", "tau"], "feh_bin": centres, "ofe_bin": centres / 4})


def _add_training_sets(store: Path) -> dict[tuple[str, str], xr.Dataset]:
    """Publish v1 and v2 of SET in the store, plus an unregistered half-written v3."""
    rng = np.random.default_rng(7)
    written = {}
    for version, counts in {**COUNTS, "v3": {"train": 2}}.items():
        for split, n in counts.items():
            ds = _split(rng, n)
            ds.to_zarr(store, group=f"training_sets/{SET}/{version}/{split}", mode="w",
                       zarr_format=2, consolidated=False)
            written[version, split] = ds
    registry = {v: {"spec": {"n_sub": "uniform", "max_sub": 3}, "seed": 10 + i, "binning_version": 1,
                    "counts": COUNTS[v], "created_utc": "2025-01-01T00:00:00Z", "checksum": f"c{i}",
                    "description": f"test set {v}", "parameters": PARAMS}
                for i, v in enumerate(COUNTS)}
    group = zarr.open_group(store, path=f"training_sets/{SET}", mode="a", zarr_format=2,
                            use_consolidated=False)
    group.attrs["versions"] = registry
    consolidate_whole_store(store)
    return written


@pytest.fixture(scope="module")
def served(tiny_store, tmp_path_factory) -> tuple[Path, Path, dict]:
    """A folder holding casbi.yaml and tiny.zarr (a copy of the tiny store plus training sets)."""
    folder = tmp_path_factory.mktemp("served")
    store = folder / "tiny.zarr"
    shutil.copytree(tiny_store[0], store)
    written = _add_training_sets(store)
    update_catalog(folder / "casbi.yaml", store)
    return folder, store, written


def _assert_same(ds: xr.Dataset, expected: xr.Dataset) -> None:
    for name in ARRAYS:
        assert np.array_equal(ds[name].values, expected[name].values, equal_nan=name == "theta"), name
        assert ds[name].dtype == expected[name].dtype, name
    assert list(ds["param"].values) == ["mstar", "mdm", "tau"]
    assert np.array_equal(ds["feh_bin"].values, expected["feh_bin"].values)


def test_registry_natural_order_and_unregistered_hidden(served):
    _, store, _ = served
    assert sorted_versions(["v10", "v2", "v1"]) == ["v1", "v2", "v10"]
    registry = read_registry(store)
    assert list(registry) == [SET]
    assert list(registry[SET]) == ["v1", "v2"]


def test_entry_reads_stored_arrays_and_defaults_to_latest(served):
    folder, _, written = served
    cat = intake.open_catalog(folder / "casbi.yaml")
    assert sorted(cat) == ["galaxies", SET]
    src = cat[SET](version="v1", split="test")
    ds = src.to_dask()
    assert ds["x"].chunks is not None  # lazy
    _assert_same(ds, written["v1", "test"])
    _assert_same(src.read(), written["v1", "test"])
    default = cat[SET]
    assert default.metadata["version"] == "v2" and default.metadata["split"] == "train"
    _assert_same(default.to_dask(), written["v2", "train"])
    _assert_same(cat[SET](split="val").read(), written["v2", "val"])
    assert cat[SET](version="latest", split="test").group == f"training_sets/{SET}/v2/test"
    assert cat.galaxies.to_dask().sizes["galaxy"] > 0


@pytest.mark.parametrize("kwargs, allowed", [
    ({"version": "v9"}, ["latest", "v1", "v2"]),
    ({"version": "v3"}, ["latest", "v1", "v2"]),
    ({"split": "validation"}, ["train", "val", "test"]),
])
def test_wrong_parameters_are_refused(served, tmp_path, kwargs, allowed):
    folder, store, _ = served
    cat = intake.open_catalog(folder / "casbi.yaml")
    with pytest.raises(ValueError) as info:  # intake's own check of `allowed:`
        cat[SET](**kwargs)
    assert all(a in str(info.value) for a in allowed)
    with pytest.raises(ValueError) as info:  # the driver's own check
        TrainingSetSource(str(store), SET, **kwargs)
    assert str(store) in str(info.value) and SET in str(info.value)
    assert all(a in str(info.value) for a in allowed)
    # a catalog whose author forgot `allowed:` still refuses, through the driver
    spec = yaml.safe_load((folder / "casbi.yaml").read_text())
    for par in spec["sources"][SET]["parameters"].values():
        del par["allowed"]
    loose = tmp_path / "loose.yaml"
    loose.write_text(yaml.safe_dump(spec).replace("{{ CATALOG_DIR }}", str(folder)))
    with pytest.raises(ValueError, match=SET) as info:
        intake.open_catalog(loose)[SET](**kwargs)
    assert all(a in str(info.value) for a in allowed)


def test_unknown_set_is_refused(served):
    _, store, _ = served
    with pytest.raises(ValueError, match=f"{SET}"):
        TrainingSetSource(str(store), "no_such_set")


def test_metadata_discover_describe(served):
    folder, store, _ = served
    src = intake.open_catalog(folder / "casbi.yaml")[SET](version="v1", split="test")
    md = src.metadata
    assert md["version"] == "v1" and md["split"] == "test" and md["seed"] == 10
    assert md["counts"] == COUNTS["v1"] and md["parameters"] == PARAMS
    assert md["checksum"] == "c0" and md["versions"] == ["v1", "v2"]
    info = src.discover()
    assert info["metadata"]["dims"] == {"halo": 3, "feh_bin": 64, "ofe_bin": 64, "block": 3, "param": 3}
    assert info["shape"]["x"] == (3, 64, 64) and info["dtype"]["members"] == "int64"
    desc = src.describe()
    assert desc["container"] == "xarray" and desc["metadata"]["counts"] == COUNTS["v2"]
    params = {p["name"]: p for p in desc["user_parameters"]}
    assert params["version"]["allowed"] == ["latest", "v1", "v2"]
    assert params["split"]["default"] == "train"
    direct = TrainingSetSource(str(store), SET)
    assert direct.describe()["args"]["name"] == SET and direct.metadata["version"] == "v2"
    assert isinstance(GalaxiesSource(str(store)).read(), xr.Dataset)


def test_catalog_is_relative_atomic_and_movable(served, tmp_path, monkeypatch):
    folder, _, written = served
    moved = tmp_path / "moved"
    shutil.copytree(folder, moved)
    text = (moved / "casbi.yaml").read_text()
    assert "{{ CATALOG_DIR }}/tiny.zarr" in text and str(folder) not in text
    src = intake.open_catalog(moved / "casbi.yaml")[SET](version="v1", split="test")
    assert src.store.startswith(str(moved))
    _assert_same(src.read(), written["v1", "test"])

    # a failed write leaves the old catalog whole and no temporary file behind
    monkeypatch.setattr("casbi_store.compose.catalog.os.replace", _fail)
    with pytest.raises(OSError):
        write_catalog(moved / "casbi.yaml", moved / "tiny.zarr", {})
    assert (moved / "casbi.yaml").read_text() == text
    assert sorted(p.name for p in moved.iterdir()) == ["casbi.yaml", "tiny.zarr"]
    monkeypatch.undo()
    inode = (moved / "casbi.yaml").stat().st_ino
    update_catalog(moved / "casbi.yaml", moved / "tiny.zarr")
    assert (moved / "casbi.yaml").read_text() == text
    assert (moved / "casbi.yaml").stat().st_ino != inode  # replaced, not rewritten in place
    assert sorted(p.name for p in moved.iterdir()) == ["casbi.yaml", "tiny.zarr"]


def _fail(*args):
    raise OSError("disk full")


CLIENT = """
import json, sys
import intake, numpy as np
cat = intake.open_catalog(sys.argv[1])
src = cat.nsub_uniform(version="v1", split="test")
ds = src.read()
for name in {arrays!r}:
    np.save(f"{{sys.argv[2]}}/{{name}}.npy", ds[name].values)
print(json.dumps({{"store": src.store, "latest": cat.nsub_uniform.metadata["version"],
                  "galaxies": cat.galaxies.to_dask().sizes["galaxy"]}}))
"""


def test_http_without_directory_listing(served, tmp_path):
    folder, _, _ = served
    with serve_http(folder) as base:
        with pytest.raises(urllib.error.HTTPError, match="404"):  # the server really lists nothing
            urllib.request.urlopen(f"{base}/tiny.zarr/training_sets/")
        out = tmp_path / "remote"
        out.mkdir()
        run = subprocess.run([sys.executable, "-c", CLIENT.format(arrays=ARRAYS), f"{base}/casbi.yaml",
                              str(out)], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["store"] == f"{base}/tiny.zarr" and report["latest"] == "v2"
    assert report["galaxies"] > 0
    local = intake.open_catalog(folder / "casbi.yaml")[SET](version="v1", split="test").read()
    for name in ARRAYS:
        np.save(tmp_path / f"{name}.npy", local[name].values)
        assert (out / f"{name}.npy").read_bytes() == (tmp_path / f"{name}.npy").read_bytes(), name


# ---- one catalog per store (issue 22) -----------------------------------------------------------

def _compose_cli(store: Path, spec: Path, *catalog: str) -> tuple[int, str, str]:
    """``casbi-store compose STORE --spec SPEC -q [--catalog C]`` in this process: (rc, out, err)."""
    import contextlib
    import io

    from casbi_store.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["compose", str(store), "--spec", str(spec), "-q",
                   *(("--catalog", *catalog) if catalog else ())])
    return rc, out.getvalue(), err.getvalue()


def _loads(catalog: Path, name: str = "tiny_set") -> int:
    """Halos of the test split read through the catalog, as the README's one-liner does."""
    return intake.open_catalog(str(catalog))[name](split="test").to_dask().sizes["halo"]


def test_compose_into_a_second_store_leaves_the_first_stores_catalog_working(
        tiny_store, tmp_path, monkeypatch, caplog):
    """`make demo` then `make test` (or the reverse) at tiny size: a repo whose default catalog
    describes its demo store; composing into another store from the repo is refused before
    composing, naming --catalog; with its own catalog both work; a catalog whose store is gone
    (the state the old `make test` left) is re-pointed, with a warning."""
    repo = tmp_path / "repo"
    (repo / "catalogs").mkdir(parents=True)
    demo, other = repo / "demo" / "store.zarr", tmp_path / "pytest" / "store.zarr"
    for store in (demo, other):
        shutil.copytree(tiny_store[0], store)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(dict(name="tiny_set", version="v1", n_sub_min=2, n_sub_max=3,
                                        train_per_n=4, test_per_n=2, seed=1)))
    monkeypatch.chdir(repo)
    default = repo / "catalogs" / "casbi.yaml"

    assert _compose_cli(demo, spec)[0] == 0                                 # make demo
    text = default.read_text()
    assert _loads(default) == 4

    rc, _, err = _compose_cli(other, spec)                                  # make test, old style
    assert rc == 2 and "Traceback" not in err and err.count("\n") == 1
    assert f"catalogs/casbi.yaml describes the store {demo.resolve()}, not {other}" in err
    assert "--catalog" in err and "one catalog describes one store" in err
    assert read_registry(other) == {}                                       # refused before composing
    assert default.read_text() == text and _loads(default) == 4

    own = other.parent / "casbi.yaml"                                       # as the docs say
    assert _compose_cli(other, spec, str(own))[0] == 0
    assert _loads(own) == 4 and default.read_text() == text
    assert "tiny_set" in read_registry(other)
    assert _compose_cli(other, spec, "")[0] == 0 and not (repo / "casbi.yaml").exists()

    # the old `make test` left the repo's catalog describing a pytest store since deleted
    update_catalog(default.with_name("stale.yaml"), other)
    shutil.rmtree(other.parent)
    default.write_text(default.with_name("stale.yaml").read_text())
    with caplog.at_level("WARNING", logger="casbi_store.compose.catalog"):
        assert _compose_cli(demo, spec)[0] == 0                             # make demo again
    assert "which no longer exists: re-pointed at" in caplog.text
    assert _loads(default) == 4

    default.write_text("sources: {}\n")                                     # not one of ours
    rc, _, err = _compose_cli(demo, spec)
    assert rc == 2 and "not a casbi catalog (no metadata.store)" in err
