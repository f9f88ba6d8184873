"""Composition in bounded memory (issue 20 part 3): the member tables are filled from blocks of
rows, θ is read from the galaxies table a chunk at a time (``BlockTheta``), the random sort keys
are drawn a chunk of rows at a time; the sets are the same, checksum for checksum, as the code
that held every table whole (13b6fcc)."""

from __future__ import annotations

import shutil

import numpy as np

from casbi_store.compose import ComposeSpec, compose
from casbi_store.compose.sources import Galaxies
from casbi_store.compose.sources import real as R

# checksums of these specs composed into the tiny store by the code before chunking (13b6fcc)
BEFORE = [
    (dict(name="a", version="v1", scheme="uniform", seed=3, n_sub_min=3, n_sub_max=8,
          train_per_n=100, test_per_n=20),
     "dcda3ec5ea91f984c5023dfe36cab001dba27a1c9a50757a6b6d121cd9882e66"),
    (dict(name="b", version="v1", scheme="uniform", seed=5, n_sub_min=2, n_sub_max=6,
          train_per_n=37, test_per_n=11, split_by="galaxy", val_fraction=0.3, test_fraction=0.5),
     "c705a0720085e9f906b12f8ad9d77fda3b1ff7675f60b6592d9c9efa6e4e11a5"),
    (dict(name="c", version="v1", scheme="uniform", seed=7, n_sub_min=1, n_sub_max=3,
          train_per_n=50, test_per_n=5, split_by="simulation", test_fraction=0.4),
     "249723b2684b03ab5bcfad9cb84bfab2b18a613ae5af8336b87de1eb54dc1de4"),
    (dict(name="d", version="v1", scheme="mass_budget", seed=9, split_by="simulation",
          n_train=300, n_test=40, test_fraction=0.4),
     "9ee98ebecedfed8213c118d7586fe923ad6e4f8d0dfdf94427ba82f7cddf4d91"),
]


def test_sets_are_the_same_as_before_chunking(tiny_store, tmp_path):
    store = tmp_path / "tiny.zarr"
    shutil.copytree(tiny_store[0], store)
    for spec, checksum in BEFORE:
        assert compose(store, ComposeSpec(**spec), progress=False)["checksum"] == checksum, spec


def test_keys_drawn_in_chunks_are_the_same_draw(monkeypatch):
    pool = np.arange(3, 60)
    whole = np.random.default_rng(4)
    expected = R.draw_uniform(pool, 7, 50, whole)
    monkeypatch.setattr(R, "KEYS_PER_CHUNK", 3 * len(pool) + 1)  # 3 rows of keys at a time
    chunked = np.random.default_rng(4)
    got = R.draw_uniform(pool, 7, 50, chunked)
    np.testing.assert_array_equal(got, expected)
    assert chunked.random() == whole.random()  # the stream left where it was
    assert all(len(set(row)) == 7 and set(row) <= set(pool) for row in got)


def test_block_theta_reads_what_the_whole_table_holds():
    rng = np.random.default_rng(0)
    galaxies = Galaxies(10 ** rng.uniform(5, 9, 20), 10 ** rng.uniform(8, 11, 20),
                        rng.uniform(1, 13, 20), np.array(["s"] * 20))
    members = np.full((9, 4), R.PAD, dtype=np.int64)
    for i in range(9):
        n = 1 + i % 4
        members[i, :n] = rng.choice(20, n, replace=False)
    whole = np.full((9, 4, 3), np.nan)  # independently: one block at a time
    for i, j in zip(*np.nonzero(members >= 0), strict=True):
        whole[i, j] = galaxies.mstar[members[i, j]], galaxies.mdm[members[i, j]], \
            galaxies.tau[members[i, j]]
    theta = R.BlockTheta(members, galaxies)
    assert theta.shape == whole.shape and theta.dtype == whole.dtype
    for key in (slice(None), slice(2, 7), np.array([8, 0, 3]), (slice(1, 5), slice(0, 2), 0)):
        np.testing.assert_array_equal(theta[key], whole[key])
    np.testing.assert_array_equal(np.asarray(theta), whole)
    assert np.asarray(theta).tobytes() == whole.tobytes()  # the NaN padding too, bit for bit


def test_member_tables_as_the_per_halo_rule():
    """Each row: the halo's members by M* descending (stable), padded with PAD, width the
    split's largest N_sub; checked row by row against that rule on the blocks drawn."""
    rng = np.random.default_rng(1)
    mstar = 10 ** np.round(rng.uniform(5, 9, 40), 1)  # rounded: ties in M* exercise stability
    halos = [rng.choice(40, n, replace=False) for n in (3, 1, 5, 5, 2)]
    table = R.members_table(halos, mstar)
    assert table.shape == (5, 5) and table.dtype == np.int64
    for row, h in zip(table, halos, strict=True):
        expected = sorted(h, key=lambda m: -mstar[m])  # Python's sort is stable
        assert list(row[: len(h)]) == expected and (row[len(h):] == R.PAD).all()
