#!/usr/bin/env bash
# The reference recipe (`--recipe cpu`) on one lent GPU, within the device tool's limits (a call
# runs at most 10 minutes; at most 8 files of 16 MiB come back from $OUT). Three runs share the GPU,
# detached (setsid: they outlive a call on a warm machine):
#   premise   the premise sweep (head dims and depths, LR probes) on the validation split
#   sc        the pack with the garment partition (the reference pack)
#   conf      the same recipe with --partition confusion (the comparison the report asks for)
# Each call waits until all three have finished or WAIT_S has passed, then returns what is done:
# packs and records as tarballs, logs. Call it again at once to collect the rest.
#
#   bash scripts/device_train.sh              # on the device machine, through the device tool
#   LOCAL=1 OUT=/tmp/out bash scripts/device_train.sh    # here, at a tiny scale: the check before spending device time
#
# Needs, carried (git-ignored): .whl (pydantic, structlog, paho-mqtt and their deps for the device's
# Python) and .data/fashion-mnist (the data set's four .gz files).
set -uo pipefail
W=${W:-/tmp/ate-device}   # survives between calls on a warm machine
OUT=${OUT:?OUT must name the folder whose files come back}
WAIT_S=${WAIT_S:-520}
GRID=${GRID:-16x3,24x3,32x3,16x4,24x4,16x3@5e-4,16x3@2e-3}
mkdir -p "$W" "$OUT"
if [ "${LOCAL:-0}" = 1 ]; then
  DEV=(--device cpu --threads 1)
  TINY=(--epochs 1 --max-train-samples 512 --max-test-samples 300 --max-val-samples 300 --batch-size 64
        --importance-batches 1 --expert-seeds 2 --busy-experts 2)
  GRID=16x3,16x2@2e-3
else
  DEV=(--device cuda)
  TINY=()
  if [ ! -d /tmp/site ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
  fi
  export PYTHONPATH=/tmp/site
  nvidia-smi -L 2>/dev/null || true
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD ATE_FASHION_MNIST_DIR=$PWD/.data/fashion-mnist PYTHONUNBUFFERED=1 COLUMNS=120
NOTE=(--device-note "the cpu recipe run on a lent GPU")

start() {  # name, command...: run detached once; its exit code lands in $W/name.rc
  local name=$1; shift
  [ -f "$W/$name.started" ] && return
  touch "$W/$name.started"
  setsid bash -c "$* > $W/$name.log 2>&1; echo \$? > $W/$name.rc" < /dev/null > /dev/null 2>&1 &
}
T="python3 -m trainer.cli"
start premise "$T premise --recipe cpu ${DEV[*]} ${TINY[*]} --premise-grid $GRID --work $W/premise"
start sc "$T pack --recipe cpu ${DEV[*]} ${TINY[*]} --work $W/sc --out $W/pack-sc '${NOTE[0]}' '${NOTE[1]}'"
start conf "$T pack --recipe cpu ${DEV[*]} ${TINY[*]} --partition confusion --work $W/conf --out $W/pack-conf '${NOTE[0]}' '${NOTE[1]}'"

t0=$(date +%s)
while [ $(( $(date +%s) - t0 )) -lt "$WAIT_S" ]; do
  [ -f "$W/premise.rc" ] && [ -f "$W/sc.rc" ] && [ -f "$W/conf.rc" ] && break
  sleep 3
done
# the reference pack's report includes the premise sweep: once both are done, rebuild its report
if [ -f "$W/premise.rc" ] && [ -f "$W/sc.rc" ] && [ ! -f "$W/sc-premise.rc" ] && [ -f "$W/premise/premise.json" ]; then
  cp "$W/premise/premise.json" "$W/sc/premise.json"
  rm -f "$W/sc/report.json"
  $T pack --recipe cpu "${DEV[@]}" "${TINY[@]}" --work "$W/sc" --out "$W/pack-sc" "${NOTE[@]}" > "$W/sc-premise.log" 2>&1
  echo $? > "$W/sc-premise.rc"
fi
for r in premise sc conf sc-premise; do echo "$r: exit $(cat "$W/$r.rc" 2>/dev/null || echo 'still running')"; done
for r in premise sc conf sc-premise; do [ -f "$W/$r.log" ] && cp "$W/$r.log" "$OUT/$r.log"; done
records() {  # work folder -> its JSON records and full test logits (no weights, no checkpoints)
  (cd "$W" && find "$1" -maxdepth 2 \( -name '*.json' -o -name 'logits-test-all.npz' \) -not -path '*/ckpt/*')
}
(cd "$W" && tar -czf "$OUT/records.tgz" $(records premise) $(records sc) $(records conf) 2>/dev/null)
[ -f "$W/sc-premise.rc" ] && tar -C "$W" -czf "$OUT/pack-sc.tgz" pack-sc
[ -f "$W/conf.rc" ] && [ -d "$W/pack-conf" ] && tar -C "$W" -czf "$OUT/pack-conf.tgz" pack-conf
ls -la "$OUT"
grep -hE "\*\*(holds|mixed|does not hold)\*\*" "$W/sc-premise.log" 2>/dev/null | cut -c1-220
tail -3 "$W/premise.log" "$W/conf.log" 2>/dev/null
