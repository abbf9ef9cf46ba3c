#!/usr/bin/env bash
# The real QGIS desktop under Xvfb with a series store, objects tracked through it and QGIS's Temporal Controller
# stepping through the tracked polygons; saves docs/img/time-series-frame<N>.png (docs/time-series.md).
# Needs `make install` (QGIS, Xvfb, the venv). A private QGIS profile and HOME; random weights (masks mean nothing).
#
# The series: the six bands of the real Landsat raster (../shared/data) as six dated frames
# (`quicksam encode --frames-from-bands --dates ...`), objects tracked with `quicksam track` (the tracker runs in
# the venv's Python, as the encoder's), then the dock opened on the store and the Temporal Controller stepped.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
raster=${1:-$repo/../shared/data/L7_ETMs.tif}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
py=$repo/.venv/bin/python
venv_site=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
dates=2001-03-01,2001-04-01,2001-05-01,2001-06-01,2001-07-01,2001-08-01

cp "$raster" "$work/landsat.tif"
"$py" -m quicksam.cli encode "$work/landsat.tif" "$work/series.qsam" --frames-from-bands --dates "$dates" \
  --random-weights --tile-size 128 >/dev/null 2>"$work/encode.log"
read -r x0 y0 x1 y1 < <("$py" - "$work/landsat.tif" <<'PY'
import sys, rasterio
with rasterio.open(sys.argv[1]) as src:
    left, bottom, right, top = src.bounds
print(left + 0.30 * (right - left), top - 0.35 * (top - bottom), left + 0.62 * (right - left), top - 0.55 * (top - bottom))
PY
)
for object in "1 $x0,$y0" "2 $x1,$y1"; do
  set -- $object
  QUICKSAM_PYTHON="$py" "$py" -m quicksam.cli track "$work/series.qsam" --frame 0 --point "$2" --object-id "$1" \
    --direction forward --output "$work/tracks$1.gpkg" >/dev/null
done

mkdir -p "$work/plugins" "$work/profiles/default/QGIS" "$repo/docs/img"
ln -s "$repo" "$work/plugins/quicksam"
cat > "$work/profiles/default/QGIS/QGIS3.ini" <<INI
[PythonPlugins]
quicksam=true
[qgis]
showTips322=false
showTips340=false
[UI]
Customization\enabled=false
INI

QGIS_PLUGINPATH="$work/plugins" PYTHONPATH="$venv_site" QUICKSAM_PYTHON="$py" \
QUICKSAM_SHOT_RASTER="$work/landsat.tif" QUICKSAM_SHOT_STORE="$work/series.qsam" QUICKSAM_SHOT_DATES="$dates" \
QUICKSAM_SHOT_TRACKS="$work/tracks1.gpkg,$work/tracks2.gpkg" QUICKSAM_SHOT_PNG="$repo/docs/img/time-series-frame" \
HOME="$work" XDG_RUNTIME_DIR="$work" \
timeout 180 xvfb-run -a -s "-screen 0 1600x1000x24" \
  qgis --nologo --noversioncheck --profiles-path "$work/profiles" \
  --code "$repo/docs/screenshot/series_startup.py" >"$work/qgis.log" 2>&1 || true
cat "$work/shot.log" 2>/dev/null || true
ls "$repo"/docs/img/time-series-frame*.png 2>/dev/null || { echo "no screenshot; QGIS log:"; tail -30 "$work/qgis.log"; exit 1; }
