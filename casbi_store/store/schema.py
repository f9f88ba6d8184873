"""The store's schema: every group, array, dimension, unit and attribute name, defined once.

``docs/STORE.md`` describes the same schema for people; every other module reads names from here.
The store is Zarr format 2 with consolidated metadata (see ``docs/STORE.md`` for why).
"""

from __future__ import annotations

from dataclasses import dataclass

SCHEMA_VERSION = 1
ZARR_FORMAT = 2

# ---- groups -------------------------------------------------------------------------------------
GALAXIES = "galaxies"  # one row per kept snapshot (a building block)
STARS = "stars"  # ragged per-star arrays, rows of one galaxy are contiguous
HISTOGRAMS = "histograms"  # 64x64 chemical-plane histograms, one per galaxy
ERRORS = "errors"  # snapshots that failed or were excluded

# ---- dimensions ---------------------------------------------------------------------------------
DIM_GALAXY = "galaxy"
DIM_STAR = "star"
DIM_ERROR = "error"
DIM_FEH_BIN = "feh_bin"
DIM_OFE_BIN = "ofe_bin"
DIM_FEH_EDGE = "feh_edge"
DIM_OFE_EDGE = "ofe_edge"


@dataclass(frozen=True)
class Field:
    """One stored array: its name, dtype, unit and meaning."""

    name: str
    dtype: str
    units: str
    description: str


# ---- galaxies table (dim: galaxy) ---------------------------------------------------------------
NAME = Field("name", "str", "", "snapshot file name, the seed's Galaxy_name (e.g. g1.05e10.00512)")
SIMULATION = Field("simulation", "str", "", "simulation folder name (e.g. g1.05e10)")
SNAPSHOT = Field("snapshot", "int32", "", "snapshot (time step) number from the file name")
TIME = Field("time", "float64", "Gyr", "cosmic time of the snapshot; the infall time tau")
REDSHIFT = Field("redshift", "float64", "", "redshift of the snapshot")
MSTAR = Field("mstar", "float64", "Msol", "total current mass of all star particles of the main halo")
MDM = Field("mdm", "float64", "Msol", "total mass of dark-matter particles of the main halo")
N_STAR = Field("n_star", "int64", "", "star particles kept (finite [Fe/H] and [O/Fe])")
N_STAR_DROPPED = Field("n_star_dropped", "int64", "", "star particles dropped: zero iron or oxygen")
HALO_NUMBER = Field("halo_number", "int64", "", "pynbody number of the halo chosen as main halo")
STAR_OFFSET = Field("star_offset", "int64", "", "first row of this galaxy in the stars group")
SOURCE_PATH = Field("source_path", "str", "", "snapshot path relative to the suite root")
SUITE_ROOT = Field("suite_root", "str", "", "absolute suite root at extraction time")
FINGERPRINT = Field("fingerprint", "str", "", "content fingerprint of the snapshot and its side files")

GALAXY_FIELDS: tuple[Field, ...] = (
    NAME, SIMULATION, SNAPSHOT, TIME, REDSHIFT, MSTAR, MDM, N_STAR, N_STAR_DROPPED, HALO_NUMBER,
    STAR_OFFSET, SOURCE_PATH, SUITE_ROOT, FINGERPRINT,
)

# ---- stars (dim: star) --------------------------------------------------------------------------
FEH = Field("feh", "float32", "dex", "[Fe/H] from FeMassFrac and hydrogen (pinned solar constants)")
OFE = Field("ofe", "float32", "dex", "[O/Fe] from OxMassFrac and FeMassFrac (pinned solar constants)")
STAR_MASS = Field("mass", "float32", "Msol", "current star-particle mass")
TFORM = Field("tform", "float32", "Gyr", "formation time (cosmic time)")

STAR_FIELDS: tuple[Field, ...] = (FEH, OFE, STAR_MASS, TFORM)

# ---- histograms (dims: galaxy, feh_bin, ofe_bin) ------------------------------------------------
COUNTS = Field("counts", "int32", "stars", "number of star particles per ([Fe/H], [O/Fe]) bin")
MASS_WEIGHTED = Field("mass_weighted", "float32", "Msol", "star-particle mass per bin")
FEH_EDGES = Field("feh_edges", "float64", "dex", "[Fe/H] bin edges (65 values)")
OFE_EDGES = Field("ofe_edges", "float64", "dex", "[O/Fe] bin edges (65 values)")
FEH_CENTERS = Field("feh_bin", "float64", "dex", "[Fe/H] bin centres")
OFE_CENTERS = Field("ofe_bin", "float64", "dex", "[O/Fe] bin centres")
HIST_NAME = Field("name", "str", "", "galaxy name, equal row by row to galaxies/name")

HISTOGRAM_FIELDS: tuple[Field, ...] = (COUNTS, MASS_WEIGHTED)
# per galaxy, rebuilt with the histograms (it depends on the binning); stores written before it
# lack it, and readers then derive it from counts (``io.stars_outside``)
N_STAR_OUTSIDE = Field("n_star_outside", "int64", "stars",
                       "kept stars outside the binning ranges, not in counts: n_star - counts.sum()")

# ---- errors (dim: error) ------------------------------------------------------------------------
ERR_PATH = Field("path", "str", "", "snapshot path relative to the suite root")
ERR_NAME = Field("name", "str", "", "snapshot file name")
ERR_SIMULATION = Field("simulation", "str", "", "simulation folder name")
ERR_STATUS = Field("status", "str", "", "'failed' or 'excluded'")
ERR_KIND = Field("kind", "str", "", "machine-readable kind (see ErrorKind)")
ERR_MESSAGE = Field("message", "str", "", "what went wrong, naming the file")
ERR_FINGERPRINT = Field("fingerprint", "str", "", "fingerprint of the source at the attempt")

ERROR_FIELDS: tuple[Field, ...] = (
    ERR_PATH, ERR_NAME, ERR_SIMULATION, ERR_STATUS, ERR_KIND, ERR_MESSAGE, ERR_FINGERPRINT,
)

# ---- attributes ---------------------------------------------------------------------------------
ATTR_SCHEMA_VERSION = "casbi_schema_version"
ATTR_BINNING = "binning"  # root: current binning spec + version (dict)
ATTR_BINNING_HISTORY = "binning_history"  # root: list of earlier binning specs
ATTR_BINNING_VERSION = "binning_version"  # histograms group: version its rows were built with
ATTR_PROVENANCE = "provenance"  # root: list of runs (package versions, command, time, counts)
ATTR_EXTRACTION = "extraction"  # root: extraction settings (solar constants, main-halo rule, limit)
ATTR_UNITS = "units"
ATTR_DESCRIPTION = "description"

N_BINS = 64

# Galaxy chunk of the histogram arrays; composition later reads whole chunks.
HISTOGRAM_CHUNK = 256
STAR_CHUNK = 1_048_576
TABLE_CHUNK = 4096

# ---- training sets: training_sets/<name>/<version>/<split> (casbi_store.store.trainingsets) -----------
TRAINING_SETS = "training_sets"
SPLITS = ("train", "val", "test")
ATTR_TRAINING_SET = "training_set"  # on training_sets/<name>/<version>: its registry entry
ATTR_VERSIONS = "versions"  # on training_sets/<name>: version -> entry (stores before per-version entries)
DIM_HALO = "halo"
DIM_BLOCK = "block"
DIM_PARAM = "param"
X = Field("x", "int32", "stars", "composed halo: sum of its members' counts histograms")
N_SUB = Field("n_sub", "int32", "", "number of building blocks in the halo")
THETA = Field("theta", "float64", "Msol, Msol, Gyr",
              "per block (M* descending): mstar, mdm, tau; NaN beyond n_sub")
MEMBERS = Field("members", "int64", "", "galaxies-table row of each block (M* descending); -1 pad, "
                "-2 a block generated by the surrogate (its theta in theta)")
TRAINING_FIELDS: tuple[Field, ...] = (X, N_SUB, THETA, MEMBERS)
SYNTHETIC_MEMBER = -2  # members of a surrogate-made block
N_OBS = Field("n_obs", "int32", "stars", "observation-model sets only: stars drawn from the halo "
              "(after the [Fe/H] selection); x counts those inside the binning ranges")
OPTIONAL_TRAINING_FIELDS: tuple[Field, ...] = (N_OBS,)  # stored only by sets that have them
# each split also stores the set's FEH_EDGES and OFE_EDGES (dims feh_edge, ofe_edge)
HALO_CHUNK = 512

# ---- observations: one survey table binned like the store (``casbi-store observe``) ------------
OBSERVATION_VERSION = 1
ATTR_OBSERVATION_VERSION = "casbi_observation_version"
DIM_ABUNDANCE = "abundance"  # coordinate: feh, ofe
DIM_PERCENTILE = "percentile"
OBS_COUNTS = Field("counts", "int32", "stars",
                   "observed stars per ([Fe/H], [O/Fe]) bin, binned with the model's (store's) edges")
OBS_N = Field("n_obs", "int32", "stars", "stars in the histogram, after every cut")
OBS_STAR_FEH = Field("star_feh", "float32", "dex", "[Fe/H] of each binned star")
OBS_STAR_OFE = Field("star_ofe", "float32", "dex", "[O/Fe] (or its alpha proxy) of each binned star")
OBS_STAR_FEH_ERR = Field("star_feh_err", "float32", "dex", "given [Fe/H] error of each binned star "
                                                           "(NaN: no error column)")
OBS_STAR_OFE_ERR = Field("star_ofe_err", "float32", "dex", "given [O/Fe] error of each binned star "
                                                           "(NaN: no error column)")
OBS_ERROR_PERCENTILES = Field("error_percentiles", "float64", "dex",
                              "percentiles of the binned stars' given errors (NaN: none given)")
OBSERVATION_FIELDS: tuple[Field, ...] = (
    OBS_COUNTS, OBS_N, OBS_STAR_FEH, OBS_STAR_OFE, OBS_STAR_FEH_ERR, OBS_STAR_OFE_ERR,
    OBS_ERROR_PERCENTILES,
)
# attributes of an observation file (dicts are JSON strings: NetCDF attributes are flat)
OBSERVATION_ATTRS: dict[str, str] = {
    "table": "absolute path of the star table",
    "table_sha256": "SHA-256 of the table file",
    "n_rows": "rows in the table",
    "columns": "JSON: role (feh, ofe, feh_err, ofe_err, flag) -> column name used",
    "ofe_mapping": "how the [O/Fe] axis was filled: '[O/Fe]' or the alpha proxy standing in for it",
    "ofe_caveat": "the proxy's caveat ('' when [O/Fe] itself was given)",
    "quality_expression": "the --where expression ('' for none)",
    "dropped": "JSON: stars dropped per reason (not_finite, flagged, quality_cut, outside_range)",
    "binning_source": "JSON: kind (model | store), path, the binning, the store's binning version",
    "min_stars": "fewest stars accepted, and why (JSON: value, reason)",
    "training_stars": "JSON: star counts of the model's training halos (percentiles), or {}",
    "provenance": "JSON: time_utc, command, host, package versions",
}
