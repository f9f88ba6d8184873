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
