"""``casbi-store observe``: a survey star table -> an observation NetCDF (see ``observe``)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from casbi_store.apply.observe import ColumnNames


def add_parser(sub) -> None:
    """Register the ``observe`` subcommand on ``casbi-store``'s subparsers."""
    o = sub.add_parser("observe", help="bin a survey star table (CSV or FITS) like the store, "
                                       "with cuts, into an observation NetCDF for infer")
    o.add_argument("table", help="star table: .csv or .fits (.fit, .fits.gz)")
    o.add_argument("--binning", required=True, metavar="MODEL_DIR|STORE",
                   help="model folder (its transform.npz edges) or store (its binning)")
    o.add_argument("--out", required=True, help="observation file to write (.nc)")
    o.add_argument("--feh-col", help="[Fe/H] column (default: FE_H, fe_h, feh, [Fe/H], FeH)")
    o.add_argument("--ofe-col", help="[O/Fe] column (default: O_FE, o_fe, ofe, [O/Fe], OFe); an "
                                     "alpha proxy such as MG_FE or alpha_fe is recorded as such")
    o.add_argument("--feh-err-col", help="[Fe/H] error column (default: <feh-col>_ERR, _err, e_)")
    o.add_argument("--ofe-err-col", help="[O/Fe] error column (default: <ofe-col>_ERR, _err, e_)")
    o.add_argument("--flag-col", help="quality flag column: nonzero (or missing) drops the star")
    o.add_argument("--where", metavar="EXPR",
                   help="quality cut kept rows must pass, e.g. \"snr > 50 and TEFF < 5500\" "
                        "(comparisons of columns with numbers, and/or/not, `odd name` quoting)")
    o.add_argument("--min-stars", type=int,
                   help="fewest stars accepted (default: from the model's training halos, >= 10)")
    o.set_defaults(func=run)


def observe(table: str, binning: str, out: str, columns: ColumnNames | None = None, *,
            where: str | None = None, min_stars: int | None = None) -> int:
    """Bin the star ``table`` with the binning of ``binning`` (model folder or store) after the
    cuts, write the observation NetCDF ``out``, print what was kept and dropped and, with a
    model folder, the misspecification score."""
    from casbi_store.apply.observe import ColumnNames, ObservationError, observe_table, write_observation

    from .common import warnings_as_lines

    if not out.endswith(".nc"):  # before reading a large table
        raise ObservationError(f"{out}: an observation is written as NetCDF; name it *.nc")
    with warnings_as_lines():  # N_obs outside a normalised model's training range
        obs = observe_table(table, binning, columns or ColumnNames(), where=where,
                            min_stars=min_stars)
    score = observation_score(obs)  # a damaged calibration is refused before anything is written
    written = write_observation(obs, out)
    print(obs.summary())
    print(score)
    print(f"observation: {obs.n_obs} stars -> {written}")
    return 0


def observation_score(obs) -> str:
    """The misspecification line of the summary: scored against the model folder's training
    halos (``casbi_store.learn.misspecification``), unavailable with a store's binning."""
    from casbi_store.learn.misspecification import Assessment, assess

    if obs.source.kind != "model":
        return Assessment(False, obs.source.path, note="binned with a store's binning: give "
                          "--binning MODEL_DIR to score it against a model's training halos"
                          ).summary()
    return assess([obs.source.path], obs.counts).summary()


def run(args: argparse.Namespace) -> int:
    from casbi_store.apply.observe import ColumnNames

    columns = ColumnNames(feh=args.feh_col, ofe=args.ofe_col, feh_err=args.feh_err_col,
                          ofe_err=args.ofe_err_col, flag=args.flag_col)
    return observe(args.table, args.binning, args.out, columns, where=args.where,
                   min_stars=args.min_stars)
