import glob
import json
import sys

# network RMSE / ridge / GBR per parameter (rank 1) and N_sub, per run and suite
params = ["n_sub", "log10_mstar_1", "log10_mdm_1", "tau_1", "log10_mstar_2", "log10_mstar_3"]
sub = sys.argv[1] if len(sys.argv) > 1 else "eval_1001"
print(f"{'run':22s}" + "".join(f"{p[:13]:>22s}" for p in params))
for f in sorted(glob.glob(f"/work/exp/runs/*/{sub}/metrics.json")):
    c = json.load(open(f))["conditions"]["external"]
    ts, b = c["two_step"], c["baselines"]
    row = []
    for p in params:
        net = ts.get(f"rmse_{p}", float("nan"))
        r = b["ridge"].get(p, {}).get("rmse", float("nan"))
        g = b["gbr"].get(p, {}).get("rmse", float("nan"))
        row.append(f"{net:6.2f}/{r:6.2f}/{g:6.2f}")
    print(f"{f.split('/')[-3]:22s}" + "".join(f"{x:>22s}" for x in row))
