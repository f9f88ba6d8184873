set -e
CS=/work/main/.venv/bin/casbi-store
cd /work/exp
$CS mock demo/suite --preset demo --seed 42 --defects
$CS extract demo/suite --store demo/store.zarr --workers 2 -q
$CS compose demo/store.zarr --spec specs/train.yaml --catalog ''
EDGES=$(/work/main/.venv/bin/python -c "
import casbi_store as c
ds = c.open_store('demo/store.zarr')
import numpy as np
print(' '.join(str(float(v)) for v in [ds.feh_edges.values[0], ds.feh_edges.values[-1], ds.ofe_edges.values[0], ds.ofe_edges.values[-1]]))
" 2>/dev/null || true)
echo "EDGES $EDGES"
