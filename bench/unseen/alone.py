import json, glob
for f in sorted(glob.glob('runs/*/eval_sel/metrics.json')):
    m = json.load(open(f)); run = f.split('/')[1]
    for c in ('held_out', 'external'):
        for path, mm in m['conditions'][c]['models'].items():
            if 'theta' in path:
                print(f"{run:16s} theta {c:9s} M*1 r2 {mm['r2_log10_mstar_1']:.2f} cov {mm['coverage_68_log10_mstar_1']:.2f} | Mdm1 r2 {mm['r2_log10_mdm_1']:.2f} cov {mm['coverage_68_log10_mdm_1']:.2f} | tau1 r2 {mm['r2_tau_1']:.2f} cov {mm['coverage_68_tau_1']:.2f} | tarp {mm['tarp_max_deviation']:.3f}")
            else:
                print(f"{run:16s} cls   {c:9s} err {mm['median_rel_error']:.3f} cov68 {mm['coverage_68']:.2f} bias {mm.get('bias_n_sub', mm.get('bias', float('nan'))):.1f}")
