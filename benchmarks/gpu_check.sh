#!/usr/bin/env bash
# Everything clustkit wants to know from a GPU, in one prepared run of at most 9 minutes on one GPU,
# written as one markdown report (docs: benchmarks/README.md, "GPU check"):
#   1. training throughput of every method on CIFAR-10 JPEG at 32 px (ResNet-18, batch 256): fp32,
#      bf16 autocast + channels-last, and the same with torch.compile (CC and SACC);
#   2. clustkit's step against the CC and SACC authors' (benchmarks/vs_reference.py), when their
#      clones are given in CC_REPO and SACC_REPO (otherwise clustkit's step and its ceiling only);
#   3. k-means on 1M x 128 features with the torch backend on the GPU (and FAISS, when installed);
#   4. a CC run on CIFAR-10 JPEG with a fixed time budget, its ACC after every epoch.
# Each part has its own time limit; a part that fails or runs out is recorded and the next runs.
#
#   export CLUSTKIT_SHARED_DATA=/path/to/shared/data      # holds cifar-10-jpg/
#   bash benchmarks/gpu_check.sh --out runs/gpu-check       # on the GPU machine
#   bash benchmarks/gpu_check.sh --smoke --out /tmp/smoke   # the same path on a CPU, tiny sizes (tests)
set -uo pipefail

SMOKE=0
OUT=runs/gpu-check
ARGS="$*"
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SMOKE=1 ;;
    --out) OUT="${2:?--out needs a folder}"; shift ;;
    *) echo "usage: gpu_check.sh [--smoke] [--out FOLDER]" >&2; exit 2 ;;
  esac
  shift
done
if [ -z "${CLUSTKIT_SHARED_DATA:-}" ] || [ ! -d "$CLUSTKIT_SHARED_DATA/cifar-10-jpg" ]; then
  echo "gpu_check.sh: set CLUSTKIT_SHARED_DATA to the folder holding cifar-10-jpg/" >&2
  exit 2
fi
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(dirname "$HERE")"
PY="${PYTHON:-python}"
CLUSTKIT="${CLUSTKIT:-clustkit}"
mkdir -p "$OUT"
REPORT="$OUT/report.md"
CIFAR="$CLUSTKIT_SHARED_DATA/cifar-10-jpg"

if [ "$SMOKE" = 1 ]; then
  DEVICE=cpu; INPUT=cifar10_small; BATCH=16; WARMUP=0; STEPS=1; COMPILE_METHODS=""
  REF=(--depths 18 --pairs 1 --batch 8 --warmup 0 --steps 1)
  KM=(--sizes 20000 --dim 16 --k 10 --max-iter 5); BUDGET=60
  TRAIN=(recipes/cc.toml --set run.epochs=2 --set run.eval_every=1 --set run.report=false)
  LIMIT_TP=300; LIMIT_REF=300; LIMIT_KM=120
else
  DEVICE=cuda; INPUT=cifar10; BATCH=256; WARMUP=5; STEPS=20; COMPILE_METHODS="cc,sacc"
  REF=(--depths 18 --pairs 1 --batch 128 --warmup 5 --steps 20)
  KM=(--sizes 1000000 --dim 128 --k 100 --max-iter 20); BUDGET=150
  TRAIN=(recipes/cifar10/cc.toml --set "data.root=\"$CIFAR\"" --set views.size=32
         --set 'backbone={name="resnet", depth=18, stem="cifar"}' --set 'run.precision="bf16"'
         --set run.channels_last=true --set run.epochs=200 --set run.eval_every=1 --set run.report=false)
  LIMIT_TP=200; LIMIT_REF=110; LIMIT_KM=40
fi

section() { printf '\n## %s\n\n' "$1" >> "$REPORT"; }
# part NAME LIMIT_S CMD...: run with a time limit, its stdout into the report, its stderr kept aside
part() {
  local name="$1" limit="$2"; shift 2
  local log="$OUT/$name.log" start=$SECONDS
  (cd "$REPO" && timeout "$limit" "$@") >> "$REPORT" 2> "$log"
  local rc=$?
  printf '\n_%s: exit %s after %ss (limit %ss); stderr in %s_\n' "$name" "$rc" "$((SECONDS - start))" "$limit" "$log" >> "$REPORT"
  [ "$rc" = 0 ] || echo "gpu_check.sh: $name exited $rc (see $log)" >&2
  return 0
}

{
  echo "# clustkit GPU check$([ "$SMOKE" = 1 ] && echo ' (smoke, CPU)')"
  echo
  echo "- written $(date -u '+%Y-%m-%d %H:%M UTC') on $(hostname); command: \`bash benchmarks/gpu_check.sh $ARGS\`"
  "$PY" -c 'import os, platform, torch; gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"; print(f"- torch {torch.__version__}, Python {platform.python_version()}, GPU: {gpu}, CPU cores: {os.cpu_count()}")'
} > "$REPORT"

section "1. Training throughput, CIFAR-10 JPEG ($INPUT, batch $BATCH, $DEVICE)"
for variant in fp32 bf16-cl bf16-cl-compile; do
  flags=(); methods=cc,sacc,dchl,digpro,iciclegcn
  case "$variant" in
    bf16-cl) flags=(--precision bf16 --channels-last) ;;
    bf16-cl-compile) flags=(--precision bf16 --channels-last --compile); methods="$COMPILE_METHODS" ;;
  esac
  [ -n "$methods" ] || continue
  printf '\n**%s**\n\n' "$variant" >> "$REPORT"
  part "throughput-$variant" "$LIMIT_TP" "$PY" benchmarks/throughput.py --inputs "$INPUT" --methods "$methods" \
    --batch-sizes "$BATCH" --device "$DEVICE" --warmup "$WARMUP" --steps "$STEPS" "${flags[@]}" \
    --out "$OUT/throughput-$variant.json"
done

section "2. clustkit's step against the authors' (vs_reference.py, $DEVICE)"
if [ -n "${CC_REPO:-}" ] && [ -n "${SACC_REPO:-}" ]; then
  kinds=reference,clustkit,ceiling
else
  kinds=clustkit,ceiling
  echo "CC_REPO / SACC_REPO not set: the authors' steps were not measured." >> "$REPORT"
fi
part vs-reference "$LIMIT_REF" "$PY" benchmarks/vs_reference.py --device "$DEVICE" --kinds "$kinds" "${REF[@]}" \
  --cc-repo "${CC_REPO:-}" --sacc-repo "${SACC_REPO:-}" --data "$CIFAR" --out "$OUT/vs_reference.json"

section "3. k-means ($DEVICE torch backend; FAISS where installed)"
part kmeans "$LIMIT_KM" "$PY" benchmarks/bench_kmeans.py "${KM[@]}" --methods faiss,torch --device "$DEVICE" \
  --out "$OUT/kmeans.json"

section "4. CC with a fixed time budget of ${BUDGET}s: ACC after each epoch"
rm -rf "$OUT/cc-budget"
(cd "$REPO" && timeout "$BUDGET" "$CLUSTKIT" run "${TRAIN[@]}" --set "run.device=\"$DEVICE\"" --out "$OUT/cc-budget") \
  > "$OUT/cc-budget.log" 2>&1
echo "_run exit $? (124: stopped by the budget)_" >> "$REPORT"
"$PY" - "$OUT/cc-budget/metrics.jsonl" >> "$REPORT" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])] if __import__("os").path.exists(sys.argv[1]) else []
print("\n| epoch | training s (cumulative) | images/s | ACC | NMI |\n|---:|---:|---:|---:|---:|")
total = 0.0
for r in rows:
    if "epoch_s" not in r:
        continue
    total += r["epoch_s"]
    acc = f"{r['acc']:.3f}" if "acc" in r else "–"
    nmi = f"{r['nmi']:.3f}" if "nmi" in r else "–"
    print(f"| {r['epoch']} | {total:.0f} | {r.get('images_per_s', 0):.0f} | {acc} | {nmi} |")
if not rows:
    print("| – | no epoch finished within the budget | | | |")
EOF
echo "report: $REPORT"
