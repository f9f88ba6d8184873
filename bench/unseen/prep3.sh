set -e
CS=/work/main/.venv/bin/casbi-store
cd /work/exp
s=3003
$CS mock ext$s/suite --preset demo --seed $s
$CS extract ext$s/suite --store ext$s/store.zarr --workers 2 -q --feh-range -2.3499064445495605 0.43312711651614744 --ofe-range -0.9210022687911987 0.4738893210887909
$CS compose ext$s/store.zarr --spec specs/ext.yaml --catalog ''
