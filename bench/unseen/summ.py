"""The targets' table of every run: `python summ.py CONDITION EVAL_FOLDER [-b]` in the work folder."""

import glob
import json
import sys

KEYS = ["coverage_68_n_sub", "median_rel_error_n_sub", "coverage_68_log10_mstar_1", "r2_log10_mstar_1",
        "coverage_68_log10_mdm_1", "r2_log10_mdm_1", "coverage_68_tau_1", "r2_tau_1",
        "coverage_68_ranks_2_3_min", "coverage_68_ranks_2_3_max", "tarp_max_deviation",
        "rmse_over_ridge", "rmse_over_gbr"]
SHORT = ["cN", "errN", "cM*", "r2M*", "cMdm", "r2Mdm", "cTau", "r2Tau", "c23lo", "c23hi", "tarp",
         "/ridge", "/gbr"]


def main() -> None:
    cond = sys.argv[1] if len(sys.argv) > 1 else "external"
    sub = sys.argv[2] if len(sys.argv) > 2 else "eval_sel"
    print(f"{'run':26s}" + "".join(f"{s:>7s}" for s in SHORT))
    for f in sorted(glob.glob(f"runs/*/{sub}/metrics.json")):
        with open(f) as fh:
            m = json.load(fh)
        c = m["conditions"].get(cond)
        if not c:
            continue
        t = c["targets"]
        name = f.split("/")[-3]
        print(f"{name:26s}" + "".join(f"{t[k]['value']:7.3f}" if k in t else "      -" for k in KEYS))
        if "-b" in sys.argv:
            for kind in ("ridge", "gbr"):
                rows = c["baselines"][kind]
                print(f"  {kind:24s}", " ".join(
                    f"{p}: rmse {r['rmse']:.3f} r2 {r.get('r2', float('nan')):.2f}"
                    for p, r in rows.items() if p in ("n_sub", "log10_mstar_1", "log10_mdm_1", "tau_1")))


if __name__ == "__main__":
    main()
