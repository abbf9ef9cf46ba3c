#!/usr/bin/env bash
# Render the real QGIS desktop under Xvfb with the QuickSAM dock open, a raster, prompts and polygons,
# and save docs/img/dock.png. Needs `make install` (QGIS, Xvfb, the venv). Uses a private QGIS profile.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
raster=${1:-$repo/../shared/data/L7_ETMs.tif}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
venv_site=$("$repo/.venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')

# A store for the raster (random weights unless a real checkpoint is cached), next to nothing of the user's.
"$repo/.venv/bin/python" -m quicksam.cli encode "$raster" "$work/store.qsam" --bands 3,2,1 --random-weights >/dev/null

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
QUICKSAM_SHOT_RASTER="$raster" QUICKSAM_SHOT_STORE="$work/store.qsam" QUICKSAM_SHOT_PNG="$repo/docs/img/dock.png" \
HOME="$work" XDG_RUNTIME_DIR="$work" \
timeout 120 xvfb-run -a -s "-screen 0 1600x1000x24" \
  qgis --nologo --noversioncheck --profiles-path "$work/profiles" \
  --code "$repo/docs/screenshot/startup.py" >"$work/qgis.log" 2>&1 || true
cat "$repo/docs/img/dock.png.log" 2>/dev/null || true; rm -f "$repo/docs/img/dock.png.log"
test -s "$repo/docs/img/dock.png" || { echo "no screenshot; QGIS log:"; tail -30 "$work/qgis.log"; exit 1; }
echo "$repo/docs/img/dock.png"
