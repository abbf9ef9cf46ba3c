#!/usr/bin/env bash
# Render the real QGIS desktop under Xvfb with the QuickSAM dock open, a raster, prompts and polygons,
# and save docs/img/dock.png. Needs `make install` (QGIS, Xvfb, the venv). Uses a private QGIS profile.
# LEVELS=1 encodes two levels (128 px tiles, factors 1 and 3) and saves docs/img/levels-tile-index.png with the
# store's tile index drawn.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
raster=${1:-$repo/../shared/data/L7_ETMs.tif}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
venv_site=$("$repo/.venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')

# A store for the raster (random weights unless a real checkpoint is cached), next to nothing of the user's.
png=$repo/docs/img/dock.png
encode_extra=()
if [ -n "${LEVELS:-}" ]; then
  png=$repo/docs/img/levels-tile-index.png
  encode_extra=(--tile-size 128 --levels 1,3)
fi
"$repo/.venv/bin/python" -m quicksam.cli encode "$raster" "$work/store.qsam" --bands 3,2,1 --random-weights \
  "${encode_extra[@]}" >/dev/null

mkdir -p "$work/plugins" "$work/profiles/default/QGIS" "$repo/docs/img"
ln -s "$repo" "$work/plugins/quicksam"
cat > "$work/profiles/default/QGIS/QGIS3.ini" <<INI
[PythonPlugins]
quicksam=true
[qgis]
showTips322=false
[UI]
Customization\enabled=false
INI

QGIS_PLUGINPATH="$work/plugins" PYTHONPATH="$venv_site" QUICKSAM_PYTHON="$repo/.venv/bin/python" \
QUICKSAM_SHOT_RASTER="$raster" QUICKSAM_SHOT_STORE="$work/store.qsam" QUICKSAM_SHOT_PNG="$png" QUICKSAM_SHOT_TILE_INDEX="${LEVELS:-}" \
HOME="$work" XDG_RUNTIME_DIR="$work" \
timeout 120 xvfb-run -a -s "-screen 0 1600x1000x24" \
  qgis --nologo --noversioncheck --profiles-path "$work/profiles" \
  --code "$repo/docs/screenshot/startup.py" >"$work/qgis.log" 2>&1 || true
cat "$png.log" 2>/dev/null || true; rm -f "$png.log"
test -s "$png" || { echo "no screenshot; QGIS log:"; tail -30 "$work/qgis.log"; exit 1; }
echo "$png"
