"""``casbi-store mock``: generate a mock NIHAO suite (tipsy + AHF files)."""

from __future__ import annotations

import argparse
import os

from casbi_store.mock import PRESETS, Physics, SuiteSpec

# option (dest) -> mock.Physics field
PHYSICS_OPTIONS = {"ia_delay": "ia_min_delay", "dtd_slope": "dtd_slope", "yield_o_cc": "y_o_cc",
                   "yield_fe_cc": "y_fe_cc", "yield_fe_ia": "y_fe_ia", "sfe": "sfe"}


def add_parser(sub) -> None:
    m = sub.add_parser("mock", help="generate a mock NIHAO suite (tipsy + AHF files)")
    m.add_argument("out", help="empty folder to write the suite into")
    m.add_argument("--preset", choices=sorted(PRESETS), default="demo")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--defects", action="store_true",
                   help="add broken inputs (truncated file, no stars, missing FeMassFrac, "
                        "no halo catalogue, a dwarf above the stellar-mass limit)")
    m.add_argument("--n-simulations", type=int, help="override the preset's number of simulations")
    m.add_argument("--n-star-max", type=int, help="cap on star particles of the largest galaxy")
    m.add_argument("--n-dm", type=int, help="dark-matter particles of a main halo at z=0")
    m.add_argument("--workers", type=int, help="processes (default: one per core)")
    ph = m.add_argument_group("chemical-evolution physics (default: the fiducial values; "
                              "pipeline files: mock: {physics: {FIELD: VALUE}}, casbi_store.mock.Physics)")
    ph.add_argument("--ia-delay", type=float, metavar="GYR",
                    help="minimum SN Ia delay for every galaxy (default: each draws 0.05-0.15)")
    ph.add_argument("--dtd-slope", type=float, help="SN Ia delay-time distribution slope (-1.1)")
    ph.add_argument("--yield-o-cc", type=float, help="core-collapse O yield (0.015)")
    ph.add_argument("--yield-fe-cc", type=float, help="core-collapse Fe yield (0.0012)")
    ph.add_argument("--yield-fe-ia", type=float, help="SN Ia Fe yield (0.0017)")
    ph.add_argument("--sfe", type=float, help="factor on the star-formation efficiency (1)")
    m.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    m.set_defaults(func=run)


def suite_spec(preset_name: str, *, seed: int = 0, defects: bool = False,
               physics: Physics | None = None, **sizes) -> SuiteSpec:
    """The ``mock.SuiteSpec`` of a preset, a seed, the defects flag, the physics (None: the
    fiducial) and size overrides (n_simulations, n_star_max, n_dm_final; None: the preset's)."""
    from casbi_store.mock import preset

    overrides = {k: v for k, v in sizes.items() if v is not None}
    if physics is not None:
        overrides["physics"] = physics
    return preset(preset_name, seed=seed, defects=defects, **overrides)


def make_suite(out: str | os.PathLike, spec: SuiteSpec, *, workers: int | None = None,
               progress: bool = True) -> str:
    """Write the suite of ``spec`` into ``out``; returns a one-line summary."""
    from casbi_store.mock import generate_suite

    manifest = generate_suite(out, spec, workers=workers or os.cpu_count() or 1, progress=progress)
    n_snap = sum(len(spec.steps) for _ in manifest["simulations"])
    return f"mock suite: {len(manifest['simulations'])} simulations, ~{n_snap} snapshots in {out}"


def run(args: argparse.Namespace) -> int:
    physics = {field: getattr(args, opt) for opt, field in PHYSICS_OPTIONS.items()
               if getattr(args, opt) is not None}
    spec = suite_spec(args.preset, seed=args.seed, defects=args.defects,
                      physics=Physics(**physics) if physics else None,
                      n_simulations=args.n_simulations, n_star_max=args.n_star_max,
                      n_dm_final=args.n_dm)
    print(make_suite(args.out, spec, workers=args.workers, progress=not args.quiet))
    return 0
