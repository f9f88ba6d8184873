"""Writing NIHAO-shaped files: tipsy snapshots (through pynbody), ``.param`` files, aux arrays, AHF.

Layout, as in NIHAO::

    g1.05e10/g1.05e10.param
    g1.05e10/g1.05e10.00512                 tipsy binary (big-endian), comoving code units
    g1.05e10/g1.05e10.00512.FeMassFrac      binary aux arrays (int32 count, then float32 values)
    g1.05e10/g1.05e10.00512.OxMassFrac
    g1.05e10/g1.05e10.00512.metals
    g1.05e10/g1.05e10.00512.massform
    g1.05e10/g1.05e10.00512.iord
    g1.05e10/g1.05e10.00512.z0.607.AHF_halos / .AHF_particles / .AHF_substructure
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Planck 2014 cosmology, as NIHAO.
HUBBLE = 0.671
OMEGA_M = 0.3175
OMEGA_L = 0.6825
OMEGA_B = 0.049
KPC_UNIT = 20_000.0  # comoving box of 20 Mpc
HUBBLE0_CODE = math.sqrt(8 * math.pi / 3)  # Gasoline: H0 in code units for G = 1
# Mass unit chosen so that pynbody's param2units gives h = HUBBLE (its own formula, inverted).
MSOL_UNIT = (HUBBLE / (HUBBLE0_CODE * 10 * 8.0285)) ** 2 / 6.6743e-8 * KPC_UNIT**3
VEL_UNIT_KMS = 8.0285 * math.sqrt(6.6743e-8 * MSOL_UNIT / KPC_UNIT**3) * KPC_UNIT
TIME_UNIT_GYR = KPC_UNIT / VEL_UNIT_KMS * 0.97781311

AUX_FAMILY_ORDER = ("gas", "dm", "star")  # tipsy file order, also of aux arrays
AHF_TYPE = {"gas": 0, "dm": 1, "star": 4}


def param_text(sim_name: str) -> str:
    """A Gasoline ``.param`` file with what pynbody needs for units and cosmology."""
    lines = [
        f"achInFile = {sim_name}.00000",
        f"achOutName = {sim_name}",
        "bComove = 1",
        f"dHubble0 = {HUBBLE0_CODE:.7f}",
        f"dOmega0 = {OMEGA_M}",
        f"dLambda = {OMEGA_L}",
        f"dOmegab = {OMEGA_B}",
        f"dKpcUnit = {KPC_UNIT:.1f}",
        f"dMsolUnit = {MSOL_UNIT:.6e}",
        "nSteps = 1024",
        "iOutInterval = 64",
        "bStarForm = 1",
        "bFeedback = 1",
        "dConstGamma = 1.66667",
    ]
    return "\n".join(lines) + "\n"


@dataclass
class Family:
    """Particles of one family in physical units (kpc, km/s, Msun, Gyr)."""

    mass: np.ndarray
    pos: np.ndarray
    vel: np.ndarray
    iord: np.ndarray
    eps: float
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.mass)


@dataclass
class Halo:
    """One AHF halo: its id, host and member particles (indices within each family)."""

    halo_id: int
    host_id: int
    members: dict[str, np.ndarray]  # family -> indices into that family
    center: np.ndarray  # physical kpc
    rvir: float  # physical kpc


def write_aux_binary(path: Path, values: np.ndarray, integer: bool = False) -> None:
    """Write a Gasoline binary aux array: big-endian int32 count, then big-endian 4-byte values."""
    dtype = ">i4" if integer else ">f4"
    with open(path, "wb") as f:
        np.array([len(values)], dtype=">i4").tofile(f)
        np.asarray(values, dtype=dtype).tofile(f)


def write_snapshot(
    path: Path,
    a: float,
    gas: Family,
    dm: Family,
    star: Family,
    halos: list[Halo],
    redshift: float,
) -> None:
    """Write a tipsy snapshot with pynbody, its aux arrays and its AHF catalogue."""
    import pynbody

    fams = {"gas": gas, "dm": dm, "star": star}
    snap = pynbody.new(gas=len(gas), dm=len(dm), star=len(star), order="gas,dm,star")
    snap._byteswap = True  # big-endian main file and aux arrays, as Gasoline writes them
    snap.properties["a"] = a
    pos_unit = KPC_UNIT * a  # physical kpc per code length
    vel_unit = VEL_UNIT_KMS * a  # comoving code velocity, as pynbody's units for bComove runs
    phi_unit = VEL_UNIT_KMS**2 / a
    for name, fam in fams.items():
        sub = getattr(snap, name)
        if len(fam) == 0:
            continue
        sub["mass"] = (fam.mass / MSOL_UNIT).astype(np.float32)
        sub["pos"] = (fam.pos / pos_unit).astype(np.float32)
        sub["vel"] = (fam.vel / vel_unit).astype(np.float32)
        sub["eps"] = np.full(len(fam), fam.eps / pos_unit, dtype=np.float32)
        r = np.linalg.norm(fam.pos - fam.pos.mean(axis=0), axis=1)
        sub["phi"] = (-(200.0**2) / (1.0 + r / 10.0) / phi_unit).astype(np.float32)
        sub["iord"] = fam.iord.astype(np.int32)
        for key, values in fam.extra.items():
            if key == "tform":
                sub[key] = (values / TIME_UNIT_GYR).astype(np.float32)
            elif key == "massform":
                sub[key] = (values / MSOL_UNIT).astype(np.float32)
            else:
                sub[key] = np.asarray(values, dtype=np.float32)
    snap.write(fmt=pynbody.snapshot.tipsy.TipsySnap, filename=str(path), binary_aux_arrays=True,
               cosmological=True)
    # NIHAO carries no .pynbody-meta files; Gasoline writes 'metals' as an aux array too.
    for meta in path.parent.glob(path.name + ".*.pynbody-meta"):
        meta.unlink()
    metals = np.concatenate([fams[f].extra.get("metals", np.zeros(len(fams[f])))
                             for f in AUX_FAMILY_ORDER])
    write_aux_binary(Path(f"{path}.metals"), metals)
    write_ahf(path, redshift, fams, halos, a)


def ahf_basename(snapshot_path: Path, redshift: float) -> str:
    return f"{snapshot_path}.z{redshift:.3f}.AHF_"


def write_ahf(
    path: Path, redshift: float, fams: dict[str, Family], halos: list[Halo], a: float
) -> None:
    """Write ``AHF_halos``, ``AHF_particles`` and ``AHF_substructure`` (AHF v1.0 ASCII format).

    Particle ids follow AHF-on-tipsy: dark matter first, then stars, then gas, each by file offset.
    Host halos include their subhaloes' particles, as AHF does.
    """
    base = ahf_basename(path, redshift)
    n_dm, n_star = len(fams["dm"]), len(fams["star"])
    id_offset = {"dm": 0, "star": n_dm, "gas": n_dm + n_star}
    columns = [
        "ID", "hostHalo", "numSubStruct", "Mvir", "npart", "Xc", "Yc", "Zc", "VXc", "VYc", "VZc",
        "Rvir", "Rmax", "r2", "mbp_offset", "com_offset", "Vmax", "v_esc", "sigV", "lambda",
        "lambdaE", "Lx", "Ly", "Lz", "b", "c", "Eax", "Eay", "Eaz", "Ebx", "Eby", "Ebz", "Ecx",
        "Ecy", "Ecz", "ovdens", "nbins", "fMhires", "Ekin", "Epot", "SurfP", "Phi0", "cNFW",
        "n_gas", "M_gas", "n_star", "M_star",
    ]
    header = "#" + "\t".join(f"{c}({i + 1})" for i, c in enumerate(columns))
    rows = []
    particle_blocks = []
    for h in halos:
        n_sub = sum(1 for other in halos if other.host_id == h.halo_id)
        mass = {f: float(fams[f].mass[h.members[f]].sum()) for f in fams}
        npart = sum(len(h.members[f]) for f in fams)
        mvir = sum(mass.values()) * HUBBLE  # Msun/h
        center = h.center / a * HUBBLE  # comoving kpc/h
        vel = {f: fams[f].vel[h.members[f]] for f in fams if len(h.members[f])}
        vmean = np.concatenate(list(vel.values())).mean(axis=0)
        sigv = float(np.concatenate(list(vel.values())).std())
        vmax = math.sqrt(4.30091e-6 * sum(mass.values()) / max(h.rvir, 1e-3))
        values = [
            h.halo_id, h.host_id, n_sub, mvir, npart, *center, *vmean, h.rvir / a * HUBBLE,
            h.rvir / a * HUBBLE * 0.2, h.rvir / a * HUBBLE * 0.1, 0, 0, vmax, 2.0 * vmax, sigv,
            0.03, 0.03, 0.0, 0.0, 1.0, 0.9, 0.8, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0,
            200.0, 20, 1.0, 0.5 * sigv**2, -(vmax**2), 0.0, -(vmax**2), 10.0,
            len(h.members["gas"]), mass["gas"] * HUBBLE, len(h.members["star"]),
            mass["star"] * HUBBLE,
        ]
        rows.append("\t".join(_ahf_value(v) for v in values))
        lines = [f"{npart}\t{h.halo_id}"]
        for fam in ("dm", "star", "gas"):
            ids = h.members[fam] + id_offset[fam]
            lines.extend(f"{i}\t{AHF_TYPE[fam]}" for i in ids)
        particle_blocks.append("\n".join(lines))
    Path(base + "halos").write_text(header + "\n" + "\n".join(rows) + "\n")
    Path(base + "particles").write_text(f"{len(halos)}\n" + "\n".join(particle_blocks) + "\n")
    sub_lines = []
    for h in halos:
        children = [o.halo_id for o in halos if o.host_id == h.halo_id]
        if children:
            sub_lines.append(f"{h.halo_id}\t{len(children)}")
            sub_lines.append("\t".join(str(c) for c in children))
    Path(base + "substructure").write_text("\n".join(sub_lines) + ("\n" if sub_lines else ""))


def _ahf_value(v: float | int) -> str:
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return f"{float(v):.6e}"


