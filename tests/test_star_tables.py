"""Star tables as surveys export them (issue 19, item 4): a byte-order mark and `#` comment
lines read like the plain CSV; linear ratios 10^[Fe/H] are refused like linear mass fractions."""

from __future__ import annotations

import numpy as np
import pytest

from casbi_store.apply.observe import ObservationError, StarTable, check_dex

RNG = np.random.default_rng(19)
FEH, OFE = RNG.normal(-0.8, 0.4, 500), RNG.normal(0.2, 0.1, 500)


def _write(path, header: str, feh, ofe, prefix: bytes = b"") -> None:
    body = "".join(f"{float(a)!r},{float(b)!r}\n" for a, b in zip(feh, ofe, strict=True))
    path.write_bytes(prefix + (header + body).encode())


@pytest.mark.parametrize("variant", ["bom", "comments", "both"])
def test_bom_and_comment_lines_read_like_the_plain_table(tmp_path, variant):
    plain, other = tmp_path / "plain.csv", tmp_path / f"{variant}.csv"
    _write(plain, "[Fe/H],[O/Fe]\n", FEH, OFE)
    comments = "# APOGEE DR17 export\n# [Fe/H] and [O/Fe] in dex\n" if variant != "bom" else ""
    _write(other, comments + "[Fe/H],[O/Fe]\n", FEH, OFE,
           b"\xef\xbb\xbf" if variant != "comments" else b"")
    a, b = StarTable(plain), StarTable(other)
    assert b.names == a.names == ["[Fe/H]", "[O/Fe]"] and b.n_rows == a.n_rows == 500
    assert np.array_equal(b.floats("[Fe/H]"), FEH) and np.array_equal(b.floats("[O/Fe]"), OFE)


def test_linear_ratios_are_refused_naming_the_column_and_dex_accepted(tmp_path):
    path = tmp_path / "linear.csv"
    with pytest.raises(ObservationError, match=r"linear\.csv: column 'FE_H' \(\[Fe/H\]\) looks "
                                               r"like linear ratios 10\^\[Fe/H\]"):
        check_dex(10 ** FEH, "[Fe/H]", "FE_H", path)
    check_dex(FEH, "[Fe/H]", "FE_H", path)  # the same stars in dex
    check_dex(np.abs(FEH[:5]), "[Fe/H]", "FE_H", path)  # a few metal-rich stars: too few to tell
