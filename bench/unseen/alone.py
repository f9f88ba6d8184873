"""Each step alone (step 2 given the true N_sub): `python alone.py` in the work folder."""

import glob
import json


def main() -> None:
    for f in sorted(glob.glob("runs/*/eval_sel/metrics.json")):
        with open(f) as fh:
            m = json.load(fh)
        run = f.split("/")[1]
        for c in ("held_out", "external"):
            for path, mm in m["conditions"][c]["models"].items():
                if "theta" in path:
                    print(f"{run:16s} theta {c:9s} M*1 r2 {mm['r2_log10_mstar_1']:.2f} cov "
                          f"{mm['coverage_68_log10_mstar_1']:.2f} | Mdm1 r2 {mm['r2_log10_mdm_1']:.2f} "
                          f"cov {mm['coverage_68_log10_mdm_1']:.2f} | tau1 r2 {mm['r2_tau_1']:.2f} cov "
                          f"{mm['coverage_68_tau_1']:.2f} | tarp {mm['tarp_max_deviation']:.3f}")
                else:
                    print(f"{run:16s} step1 {c:9s} err {mm['median_rel_error']:.3f} cov68 "
                          f"{mm['coverage_68']:.2f}")


if __name__ == "__main__":
    main()
