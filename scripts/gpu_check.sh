#!/usr/bin/env bash
# GPU check of margin_theory, one prepared run (< 8 min on one GPU):
#   1. the test suite's CUDA-marked tests            (pytest -m cuda)
#   2. resume equality on the GPU                    (4 epochs straight vs 2 + --resume 2)
#   3. Table 2 at paper scale, 1 seed                (linear, relu2, quadratic (+ lowrank r=1), MNIST, 10 epochs)
#   4. Fig. 3 ranks 1-32 on MNIST, 1 seed            (experiment fig3-ranks --parts mnist)
#   5. ResNet-18-lowrank epoch rate, CIFAR-10 subset (2 epochs, --augment)
#   6. python -m margin_theory.bench --device cuda --quick
#
# usage: scripts/gpu_check.sh DATA_DIR [OUT]
#   DATA_DIR: folder with MNIST/raw and cifar-10-subset (as ../shared/data)
#   OUT:      output folder (default gpu-check-<UTC time>); it gets gpu_check.json (one
#             document: every step's status, seconds and figures) and gpu_check.log
# environment: GPU_CHECK_DEVICE (default cuda; "cpu" runs the same logic on a CPU, for a
#   dry run), GPU_CHECK_TINY=1 (tiny sizes: seconds, for checking the script itself),
#   GPU_CHECK_STEP_TIMEOUT (seconds per step, default 300).
# Exit status: 0 when every step passed, 1 otherwise, 2 on bad arguments.
set -u -o pipefail

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    echo "usage: $0 DATA_DIR [OUT]" >&2
    exit 2
fi
DATA=$1
if [ ! -d "$DATA/MNIST/raw" ]; then
    echo "$0: error: $DATA/MNIST/raw not found (DATA_DIR must hold the MNIST files)" >&2
    exit 2
fi
REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=${2:-gpu-check-$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$OUT" || { echo "$0: error: cannot create $OUT" >&2; exit 2; }
OUT=$(cd "$OUT" && pwd)
DATA=$(cd "$DATA" && pwd)
LOG="$OUT/gpu_check.log"
STEPS="$OUT/steps"
mkdir -p "$STEPS"
: > "$LOG"
DEVICE=${GPU_CHECK_DEVICE:-cuda}
TINY=${GPU_CHECK_TINY:-0}
STEP_TIMEOUT=${GPU_CHECK_STEP_TIMEOUT:-300}
PY=${PYTHON:-python}
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export MARGIN_THEORY_SHARED_DATA="$DATA"
cd "$REPO"

log() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$LOG"; }

# step NAME COMMAND... : run with a timeout, log its output, record status and seconds
step() {
    local name=$1; shift
    log "step $name: $*"
    local t0 t1 rc
    t0=$(date +%s.%N)
    timeout "$STEP_TIMEOUT" "$@" >> "$LOG" 2>&1
    rc=$?
    t1=$(date +%s.%N)
    printf '{"name": "%s", "rc": %d, "seconds": %s}\n' "$name" "$rc" "$(awk "BEGIN{print $t1 - $t0}")" > "$STEPS/$name.status"
    log "step $name: exit $rc"
    return 0
}

log "gpu_check: repo $REPO, data $DATA, out $OUT, device $DEVICE, tiny $TINY"
$PY - >> "$LOG" 2>&1 <<'EOF'
import torch
print("torch", torch.__version__, "cuda available", torch.cuda.is_available(),
      "devices", [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])
EOF

# 1. CUDA-marked tests
if [ "$DEVICE" = cuda ]; then
    step cuda_tests $PY -m pytest -q -p no:cacheprovider -m cuda tests/ -rs --junitxml="$STEPS/cuda_tests.xml"
else
    log "step cuda_tests: skipped (device $DEVICE)"
fi

# 2. resume equality on the device
step resume $PY - "$DEVICE" "$OUT/resume" "$STEPS/resume.json" "$TINY" <<'EOF'
import json, sys, shutil
import torch
from margin_theory.train import TrainConfig, train, read_metrics
dev, out, dest, tiny = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
shutil.rmtree(out, ignore_errors=True)
base = dict(dataset="mnist", data_dir=None, model="lowrank", rank=8, lr=0.05, momentum=0.9, augment=True,
            epochs=4, device=dev, quiet=True, n_train=2000 if tiny else None, n_test=500 if tiny else None)
import os
base["data_dir"] = os.environ["MARGIN_THEORY_SHARED_DATA"]
a = train(TrainConfig(**base, out=out + "/straight"), log=None)
train(TrainConfig(**{**base, "epochs": 2}, out=out + "/resumed"), log=None)
b = train(TrainConfig(**base, out=out + "/resumed", resume=True), log=None)
sa, sb = a.model.state_dict(), b.model.state_dict()
max_param = max(float((sa[k] - sb[k]).abs().max()) for k in sa)
ra, rb = read_metrics(out + "/straight"), read_metrics(out + "/resumed")
keys = ("train_loss", "gamma_bar", "gamma_min", "theta_norm", "train_acc", "test_acc")
max_metric = max(abs(x[k] - y[k]) for x, y in zip(ra, rb) for k in keys)
res = {"device": a.final["device"], "max_abs_param_diff": max_param, "max_abs_metric_diff": max_metric,
       "bitwise": max_param == 0.0, "ok": max_param <= 1e-6 and max_metric <= 1e-6,
       "mean_epoch_seconds": a.final["mean_epoch_seconds"]}
json.dump(res, open(dest, "w"))
print(json.dumps(res))
sys.exit(0 if res["ok"] else 1)
EOF

# 3. Table 2 at paper scale, 1 seed; 4. Fig. 3 ranks on MNIST, 1 seed
SCALE=paper
[ "$TINY" = 1 ] && SCALE=tiny
step table2 $PY -m margin_theory.experiment table2 --scale $SCALE --seeds 1 --data-dir "$DATA" --device "$DEVICE" \
    --out "$OUT/table2" --json --quiet
step fig3 $PY -m margin_theory.experiment fig3-ranks --scale $SCALE --seeds 1 --parts mnist --data-dir "$DATA" \
    --device "$DEVICE" --out "$OUT/fig3" --json --quiet

# 5. ResNet-18-lowrank epoch rate on the CIFAR-10 subset
if [ -d "$DATA/cifar-10-subset" ]; then
    EP=2; NT=""
    [ "$TINY" = 1 ] && { EP=1; NT="--n-train 32 --n-test 16"; }
    step resnet18 $PY -m margin_theory.train --dataset cifar10-subset --data-dir "$DATA" --model resnet18-lowrank \
        --rank 8 --augment --normalize --epochs $EP $NT --lr 0.05 --momentum 0.9 --batch-size 128 --device "$DEVICE" \
        --checkpoint-every none --quiet --json --out "$OUT/resnet18"
else
    log "step resnet18: skipped ($DATA/cifar-10-subset not found)"
fi

# 6. the benchmark on the device
if [ "$TINY" = 1 ]; then
    log "step bench: skipped (tiny)"
else
    step bench sh -c "$PY -m margin_theory.bench --device $DEVICE --quick --json > '$STEPS/bench.json'"
fi

# one JSON document: every step's status and figures
$PY - "$OUT" "$DEVICE" <<'EOF' | tee -a "$LOG"
import json, sys, glob, os
out, dev = sys.argv[1], sys.argv[2]
steps = {}
for f in sorted(glob.glob(os.path.join(out, "steps", "*.status"))):
    s = json.load(open(f))
    steps[s["name"]] = {"ok": s["rc"] == 0, "rc": s["rc"], "seconds": round(s["seconds"], 1)}
def load(p):
    try:
        return json.load(open(p))
    except (OSError, ValueError):
        return None
if "resume" in steps:
    steps["resume"]["result"] = load(os.path.join(out, "steps", "resume.json"))
for name in ("table2", "fig3"):
    r = load(os.path.join(out, name, "results.json"))
    if name in steps and r is not None:
        steps[name]["wall_time_s"] = r.get("wall_time_s")
        steps[name]["runs"] = [{k: x.get(k) for k in ("label", "model", "rank", "paper", "test_acc_mean", "n_seeds",
                                                      "epochs", "train_s", "wall_s")} for x in r.get("runs", [])]
s = load(os.path.join(out, "resnet18", "summary.json"))
if "resnet18" in steps and s is not None:
    eps = s.get("mean_epoch_seconds")
    steps["resnet18"]["result"] = {"mean_epoch_seconds": eps, "n_train": s.get("n_train"),
                                   "samples_per_second": s["n_train"] / eps if eps else None,
                                   "test_acc": s.get("test_acc"), "device": s.get("device")}
b = load(os.path.join(out, "steps", "bench.json"))
if "bench" in steps and b is not None:
    steps["bench"]["cases"] = [{k: c.get(k) for k in ("name", "ours", "reference", "unit", "ratio", "spread",
                                                       "target", "met")} for c in b["cases"]]
    steps["bench"]["machine"] = b.get("machine")
doc = {"device": dev, "ok": all(v["ok"] for v in steps.values()), "steps": steps}
with open(os.path.join(out, "gpu_check.json"), "w") as fh:
    json.dump(doc, fh, indent=1)
print(json.dumps({k: {"ok": v["ok"], "seconds": v["seconds"]} for k, v in steps.items()}))
print("all steps passed" if doc["ok"] else "SOME STEPS FAILED: see " + os.path.join(out, "gpu_check.log"))
sys.exit(0 if doc["ok"] else 1)
EOF
