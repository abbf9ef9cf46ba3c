#!/usr/bin/env bash
# From the plugin zip to the first polygon in the real QGIS desktop under Xvfb, as a user does it
# (docs/screenshot/walkthrough.py has the steps). A fresh QGIS profile and HOME in a temporary folder;
# QGIS's Python sees neither the development venv nor the checkout: the plugin comes from the zip,
# ONNX Runtime from the set-up (real pip against the package index).
#
#   walkthrough.sh IMAGES_DIR REPORT_JSON [RASTER]
#
# Needs `make install` (QGIS, Xvfb, the venv: its Python is chosen as the encoder's existing Python, or
# QUICKSAM_WALK_ENCODER_PYTHON's).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
images=$(realpath -m "$1"); report=$(realpath -m "$2")
source_raster=${3:-$repo/../shared/data/L7_ETMs.tif}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p -m 700 "$work/home"; mkdir -p "$work/data" "$work/profiles/profiles/default/QGIS" "$images" "$(dirname "$report")"

make -s -C "$repo" --no-print-directory package DIST="$work/dist" >/dev/null
zip=$(ls "$work"/dist/quicksam-*.zip)
cp "$source_raster" "$work/data/"   # the user's raster, in a folder of theirs (the store goes beside it)
raster="$work/data/$(basename "$source_raster")"

cat > "$work/profiles/profiles/default/QGIS/QGIS3.ini" <<INI
[qgis]
showTips322=false
showTips340=false
checkVersion=false
askToSaveMemoryLayers=false
[UI]
Customization\enabled=false
INI

# pip's own settings of this machine (index, mirror, certificates) follow the user into the fresh HOME.
pip_user_config=$(/usr/bin/python3 -m pip config debug 2>/dev/null | sed -n 's#^ *\(/.*pip\.conf\), exists: True#\1#p' \
  | grep -v '^/etc\|^/usr' | head -1 || true)

run_qgis() {  # run_qgis SESSION REPORT LOG
  env -i PATH=/usr/local/bin:/usr/bin:/bin HOME="$work/home" XDG_RUNTIME_DIR="$work/home" LANG=C.UTF-8 \
    ${pip_user_config:+PIP_CONFIG_FILE="$pip_user_config"} \
    ${PIP_FIND_LINKS:+PIP_FIND_LINKS="$PIP_FIND_LINKS"} ${PIP_CERT:+PIP_CERT="$PIP_CERT"} \
    ${PIP_INDEX_URL:+PIP_INDEX_URL="$PIP_INDEX_URL"} ${PIP_EXTRA_INDEX_URL:+PIP_EXTRA_INDEX_URL="$PIP_EXTRA_INDEX_URL"} \
    ${HTTPS_PROXY:+HTTPS_PROXY="$HTTPS_PROXY"} ${https_proxy:+https_proxy="$https_proxy"} \
    QUICKSAM_WALK_ZIP="$zip" QUICKSAM_WALK_RASTER="$raster" \
    QUICKSAM_WALK_ENCODER_PYTHON="${QUICKSAM_WALK_ENCODER_PYTHON:-$repo/.venv/bin/python}" \
    QUICKSAM_WALK_IMAGES="$images" QUICKSAM_WALK_REPORT="$2" QUICKSAM_WALK_SESSION="$1" \
    timeout 900 xvfb-run -a -s "-screen 0 1440x900x24" \
    qgis --nologo --noversioncheck --profiles-path "$work/profiles" \
    --code "$repo/docs/screenshot/walkthrough.py" >"$3" 2>&1 || true
}
run_qgis first "$report" "$work/qgis.log"
run_qgis restart "$work/restart.json" "$work/restart.log"   # the same profile, QGIS started again

# What the user ends with, for the caller to check: where the store went, what is in the profile.
python3 - "$report" "$work" <<'PY'
import json, os, sys
report_path, work = sys.argv[1], sys.argv[2]
report = json.load(open(report_path)) if os.path.exists(report_path) else {"error": "QGIS wrote no report"}
def files(root):
    return sorted(os.path.relpath(os.path.join(d, f), work) for d, _, fs in os.walk(root) for f in fs)
report["data_folder"] = files(os.path.join(work, "data"))
in_profile = files(os.path.join(work, "profiles", "profiles", "default", "QuickSAM"))
report["profile_quicksam_runtime"] = sorted({p.split("/")[5] for p in in_profile if p.count("/") > 5 and "/runtime/" in p})
report["profile_quicksam_onnxruntime"] = [p for p in in_profile if p.endswith("onnxruntime/__init__.py")]
report["qgis_log_tail"] = open(os.path.join(work, "qgis.log"), errors="replace").read()[-3000:]
restart = os.path.join(work, "restart.json")
report["restart"] = json.load(open(restart)) if os.path.exists(restart) else {"error": "no report"}
json.dump(report, open(report_path, "w"), indent=1)
PY
echo "$report"
