#!/usr/bin/env bash
# Both reference recipes on one lent GPU, within the device tool's limits (files back from $OUT:
# at most 8 files of 16 MiB, 64 MiB a call), in two back-to-back calls on the same warm machine:
#
#   phase 1: start the GPU recipe (depth 12) detached (setsid: it outlives the call), run the CPU
#            recipe (depth 4) in the foreground with --device cuda, return the first 4 parts of
#            its pack (a tar split in 16 MB parts) and the logs;
#   phase 2: return the other parts, wait for the depth-12 run (at most WAIT_S), return its
#            reports, records and log.
#
#   bash scripts/device_train.sh 1      # then, at once:  bash scripts/device_train.sh 2
#   cat runs/device/pack-d4.tar.part-* | tar -x -C runs/device     # here, afterwards
#
# Needs, carried (git-ignored): .whl (pydantic and its deps for the device's Python) and
# .data/fashion-mnist (the data set's four .gz files). LOCAL=1 runs it on this machine at a tiny
# scale, as the end-to-end check before spending device time.
set -uo pipefail
PHASE=${1:?phase 1 or 2}
W=${W:-/tmp/ate-device}   # survives between the two calls on a warm machine
OUT=${OUT:?OUT must name the folder whose files come back}
WAIT_S=${WAIT_S:-420}
mkdir -p "$W" "$OUT"
if [ "${LOCAL:-0}" = 1 ]; then
  DEV=(--device cpu --threads 2)
  TINY=(--epochs 1 --max-train-samples 512 --expert-train-samples 256 --max-test-samples 300 --max-val-samples 300
        --batch-size 64 --importance-batches 1 --expert-seeds 2)
  D12=(--depth 2 --patch-size 7)
else
  DEV=(--device cuda)
  TINY=()
  D12=()
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 3
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD ATE_FASHION_MNIST_DIR=$PWD/.data/fashion-mnist PYTHONUNBUFFERED=1
export COLUMNS=120

if [ "$PHASE" = 1 ]; then
  nvidia-smi -L 2>/dev/null || true
  rm -rf "$W"/d12.rc
  setsid bash -c "python3 -m trainer.cli pack --recipe gpu ${DEV[*]} ${TINY[*]} ${D12[*]} --work $W/d12 --out $W/pack-d12 \
      > $W/d12.log 2>&1; echo \$? > $W/d12.rc" < /dev/null > /dev/null 2>&1 &
  t0=$(date +%s)
  python3 -m trainer.cli pack --recipe cpu "${DEV[@]}" "${TINY[@]}" --work "$W/d4" --out "$W/pack-d4" \
    --device-note "the CPU recipe run on a lent GPU" > "$W/d4.log" 2>&1
  rc=$?
  echo "depth-4 (CPU recipe) exit $rc after $(( $(date +%s) - t0 )) s"
  cp "$W/d4.log" "$OUT/d4.log"
  [ $rc = 0 ] || { tail -40 "$W/d4.log"; exit $rc; }
  tar -C "$W" -cf "$W/pack-d4.tar" pack-d4 d4/config.json d4/teacher.json d4/prune.json d4/baselines.json \
    d4/subset-teachers.json d4/experts.json d4/expert-fits.json d4/partition.json
  (cd "$W" && rm -f pack-d4.tar.part-* && split -b 16000000 -d -a 1 pack-d4.tar pack-d4.tar.part-)
  ls -la "$W"/pack-d4.tar.part-*
  for f in $(ls "$W"/pack-d4.tar.part-* | head -4); do cp "$f" "$OUT/"; done
  grep -E "^\| (progressive|static|uniform|generalist|baseline)|\*\*(holds|mixed|does not hold)\*\*" "$W/d4.log" | head -40
  tail -3 "$W/d12.log"
else
  for f in $(ls "$W"/pack-d4.tar.part-* | tail -n +5); do cp "$f" "$OUT/"; done
  for _ in $(seq 1 $((WAIT_S / 5))); do [ -f "$W/d12.rc" ] && break; sleep 5; done
  echo "depth-12 (GPU recipe) exit $(cat "$W/d12.rc" 2>/dev/null || echo 'still running')"
  (cd "$W" && tar -czf "$OUT/d12-results.tgz" --exclude='*.safetensors' --exclude='ckpt' --exclude='*.npz' d12.log d12 \
     $( [ -d pack-d12 ] && echo pack-d12 ))
  grep -E "\*\*(holds|mixed|does not hold)\*\*" "$W/d12.log" | head -20
  tail -5 "$W/d12.log"
fi
