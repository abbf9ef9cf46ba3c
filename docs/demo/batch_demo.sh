#!/usr/bin/env bash
# `make demo-batch`: many rasters in one run (docs/batch.md), then on Dask clusters (docs/scaling.md).
# The input is the test folder of tests/batch_data.py (sub-folders, the same name in two folders, a corrupt
# raster, a text file, a name with spaces and non-ASCII letters). Seeded random weights and 128 px tiles keep it
# short: the masks mean nothing, the runs show the naming, logs, summary, failures and clusters.
set -uo pipefail
PY=${PY:-.venv/bin/python}
OUT=${1:?usage: batch_demo.sh OUTPUT_FOLDER}
QS=("$PY" -m quicksam.cli)
FAST=(--random-weights --tile-size 128 --overlap 16 --device cpu)
# Random weights score every mask low (about 0.55): let some through so the demo shows objects.
LOOSE=(--pred-iou-thresh 0.5 --stability-score-thresh 0)
rm -rf "$OUT" && mkdir -p "$OUT"
"$PY" -c "import sys; from pathlib import Path; sys.path.insert(0, 'tests'); \
from batch_data import build_batch_folder; build_batch_folder(Path(sys.argv[1]))" "$OUT/input"

echo "== 1. the list only (--dry-run): two scene.tif clash, so --disambiguate"
"${QS[@]}" encode "$OUT/input" --recursive --output-dir "$OUT/stores" --disambiguate --dry-run "${FAST[@]}"
echo "== 2. encode every raster (fake.tif fails alone: exit status 4)"
"${QS[@]}" encode "$OUT/input" --recursive --output-dir "$OUT/stores" --disambiguate "${FAST[@]}"
echo "exit status: $?"
echo "== 3. segment everything on the stores"
"${QS[@]}" segment-all "$OUT/input" --recursive --output-dir "$OUT/objects" --stores-dir "$OUT/stores" \
  --disambiguate --points-per-side 8 "${LOOSE[@]}"
echo "exit status: $?"
echo "== 4. the same batch on a Dask LocalCluster of 2 workers (tiles spread when files <= workers)"
"${QS[@]}" encode "$OUT/input/north/scene.tif" --output-dir "$OUT/cluster" --workers 2 "${FAST[@]}"
echo "exit status: $?"
echo "== 5. an existing cluster: a scheduler and two workers on 127.0.0.1"
PORT=$("$PY" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
"$PY" -m distributed.cli.dask_scheduler --host 127.0.0.1 --port "$PORT" --no-dashboard >"$OUT/scheduler.log" 2>&1 &
PIDS=($!)
sleep 3
for _ in 1 2; do
  "$PY" -m distributed.cli.dask_worker "tcp://127.0.0.1:$PORT" --nthreads 1 --no-dashboard \
    >>"$OUT/workers.log" 2>&1 &
  PIDS+=($!)
done
trap 'kill "${PIDS[@]}" 2>/dev/null' EXIT
sleep 5
"${QS[@]}" encode "$OUT/input/south/scene.tif" "$OUT/cluster/south.qsam" --scheduler "tcp://127.0.0.1:$PORT" \
  "${FAST[@]}"
"${QS[@]}" segment-all "$OUT/cluster/south.qsam" --output "$OUT/cluster/south_objects.gpkg" \
  --scheduler "tcp://127.0.0.1:$PORT" --points-per-side 8 "${LOOSE[@]}"
echo "exit status: $?"
echo "Outputs in $OUT: stores/ (a log beside each), objects/, cluster/"
