"""Independent reader for NIHAO-style tipsy snapshots and AHF catalogues.

Uses only numpy and the standard library (no pynbody, nothing from ``casbi_store``),
so tests can check the pynbody-based extraction against a computation made straight
from the files.
"""

from __future__ import annotations

import glob
import math
import os
import struct

import numpy as np

HEADER_FMT = ">diiiiii"
HEADER_SIZE = struct.calcsize(HEADER_FMT)  # 32 bytes

_F = ">f4"
GAS_DTYPE = np.dtype([(k, _F) for k in (
    "mass", "x", "y", "z", "vx", "vy", "vz", "rho", "temp", "eps", "metals", "phi")])
DARK_DTYPE = np.dtype([(k, _F) for k in (
    "mass", "x", "y", "z", "vx", "vy", "vz", "eps", "phi")])
STAR_DTYPE = np.dtype([(k, _F) for k in (
    "mass", "x", "y", "z", "vx", "vy", "vz", "metals", "tform", "eps", "phi")])

G_CGS = 6.6743e-8


def read_header(path: str) -> dict:
    """Read the tipsy header.

    Returns
    -------
    dict
        ``a`` (expansion factor), ``n``, ``ngas``, ``ndark``, ``nstar``.
    """
    with open(path, "rb") as f:
        raw = f.read(HEADER_SIZE)
    if len(raw) != HEADER_SIZE:
        raise ValueError(f"{path}: file too short for a tipsy header")
    a, n, _ndim, ngas, ndark, nstar, _pad = struct.unpack(HEADER_FMT, raw)
    if n != ngas + ndark + nstar:
        raise ValueError(f"{path}: nbodies {n} != {ngas}+{ndark}+{nstar}")
    return {"a": a, "n": n, "ngas": ngas, "ndark": ndark, "nstar": nstar}


def read_param(param_path: str) -> dict[str, str]:
    """Read a ``.param`` file of ``key = value`` lines (``#`` starts a comment)."""
    out: dict[str, str] = {}
    with open(param_path) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if "=" in line:
                key, value = line.split("=", 1)
                out[key.strip()] = value.strip()
    return out


def read_particles(path: str) -> dict:
    """Read all particle records of a tipsy file.

    Returns
    -------
    dict
        ``gas``, ``dark``, ``star``: native-endian structured arrays of the record fields.
    """
    h = read_header(path)
    out = {}
    offset = HEADER_SIZE
    with open(path, "rb") as f:
        for key, dtype, count in (("gas", GAS_DTYPE, h["ngas"]), ("dark", DARK_DTYPE, h["ndark"]),
                                  ("star", STAR_DTYPE, h["nstar"])):
            f.seek(offset)
            arr = np.fromfile(f, dtype=dtype, count=count)
            if len(arr) != count:
                raise ValueError(f"{path}: truncated in {key} block ({len(arr)} of {count})")
            out[key] = arr.astype(dtype.newbyteorder("="))
            offset += dtype.itemsize * count
    return out


def read_aux(path: str, n_expected: int, integer: bool = False) -> np.ndarray:
    """Read a binary aux array (big-endian int32 count, then float32 or int32 values).

    Raises
    ------
    ValueError
        If the stored count differs from ``n_expected`` or the file is short.
    """
    with open(path, "rb") as f:
        raw = f.read(4)
        if len(raw) != 4:
            raise ValueError(f"{path}: empty aux file")
        (count,) = struct.unpack(">i", raw)
        if count != n_expected:
            raise ValueError(f"{path}: count {count} != expected {n_expected}")
        arr = np.fromfile(f, dtype=">i4" if integer else ">f4", count=count)
    if len(arr) != count:
        raise ValueError(f"{path}: truncated ({len(arr)} of {count} values)")
    return arr.astype(np.int32 if integer else np.float32)


def read_ahf_halos(path: str) -> dict[str, np.ndarray]:
    """Read an ``AHF_halos`` table; column names lose their ``(k)`` suffix and ``#``."""
    with open(path) as f:
        header = f.readline().lstrip("#").split()
    names = [h.split("(")[0] for h in header]
    data = np.loadtxt(path, comments="#", ndmin=2)
    if data.shape[1] != len(names):
        raise ValueError(f"{path}: {data.shape[1]} columns but {len(names)} names")
    cols = {name: data[:, i] for i, name in enumerate(names)}
    for name in ("ID", "hostHalo", "npart", "numSubStruct", "n_gas", "n_star"):
        if name in cols:
            cols[name] = cols[name].astype(np.int64)
    return cols


def _read_ahf_members_typed(particles_path: str) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Halo ID -> (particle ids, particle types), in file order."""
    with open(particles_path) as f:
        tokens = f.read().split()
    nhalo = int(tokens[0])
    pos = 1
    out = {}
    for _ in range(nhalo):
        npart, hid = int(tokens[pos]), int(tokens[pos + 1])
        pos += 2
        pairs = np.array(tokens[pos:pos + 2 * npart], dtype=np.int64).reshape(npart, 2)
        if len(pairs) != npart:
            raise ValueError(f"{particles_path}: halo {hid} truncated")
        pos += 2 * npart
        out[hid] = (pairs[:, 0], pairs[:, 1])
    return out


def read_ahf_members(particles_path: str) -> dict[int, np.ndarray]:
    """Read a new-format ``AHF_particles`` file.

    Returns
    -------
    dict
        Halo ID -> sorted particle ids (AHF numbering: dark, then star, then gas).
    """
    return {hid: np.sort(ids) for hid, (ids, _t) in _read_ahf_members_typed(particles_path).items()}


def time_unit_gyr(param: dict[str, str]) -> float:
    """Code time unit in Gyr from ``dKpcUnit`` and ``dMsolUnit``."""
    kpc, msol = float(param["dKpcUnit"]), float(param["dMsolUnit"])
    velunit = 8.0285 * math.sqrt(G_CGS * msol / kpc**3) * kpc  # km/s
    return kpc / velunit * 0.97781311


def main_halo_stars(snapshot_path: str) -> dict:
    """Extract the stars of the first halo row in ``AHF_halos`` straight from the files.

    Returns
    -------
    dict
        ``star_mass_msun``, ``dm_mass_msun_total``, ``fe``, ``ox``, ``metals``,
        ``tform_gyr``, ``n_star``, ``time_a``; stars in file (= sorted AHF id) order.
    """
    folder = os.path.dirname(os.path.abspath(snapshot_path))
    params = glob.glob(os.path.join(folder, "*.param"))
    if len(params) != 1:
        raise FileNotFoundError(f"expected one .param in {folder}, found {params}")
    param = read_param(params[0])
    msol = float(param["dMsolUnit"])
    halos_files = sorted(glob.glob(glob.escape(snapshot_path) + ".z*.AHF_halos"))
    if len(halos_files) != 1:
        raise FileNotFoundError(f"expected one AHF_halos for {snapshot_path}: {halos_files}")
    halos = read_ahf_halos(halos_files[0])
    main_id = int(halos["ID"][0])
    members = _read_ahf_members_typed(halos_files[0][: -len("halos")] + "particles")
    ids, types = members[main_id]
    order = np.argsort(ids)
    ids, types = ids[order], types[order]

    h = read_header(snapshot_path)
    parts = read_particles(snapshot_path)
    ndark, nstar = h["ndark"], h["nstar"]
    is_dark = ids < ndark
    is_star = (ids >= ndark) & (ids < ndark + nstar)
    if not (np.all(types[is_dark] == 1) and np.all(types[is_star] == 4)
            and np.all(types[~is_dark & ~is_star] == 0)):
        raise ValueError("AHF particle types disagree with the id ranges")
    dark_idx = ids[is_dark]
    star_idx = ids[is_star] - ndark
    aux_idx = h["ngas"] + ndark + star_idx  # aux arrays are in gas, dark, star order

    def aux(suffix: str) -> np.ndarray:
        return read_aux(f"{snapshot_path}.{suffix}", h["n"])[aux_idx]

    stars = parts["star"][star_idx]
    return {
        "star_mass_msun": stars["mass"].astype(np.float64) * msol,
        "dm_mass_msun_total": float(parts["dark"]["mass"][dark_idx].astype(np.float64).sum()
                                    * msol),
        "fe": aux("FeMassFrac"),
        "ox": aux("OxMassFrac"),
        "metals": aux("metals"),
        "tform_gyr": stars["tform"].astype(np.float64) * time_unit_gyr(param),
        "n_star": int(len(star_idx)),
        "time_a": float(h["a"]),
    }
