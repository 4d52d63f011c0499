#!/usr/bin/env bash
# Issue 7, item 1, in ONE device call that fits this workplace's device budget (15 min of device time per task, a
# machine start of a few minutes included; one command at most 10 min). Parts run in order of what the issue's
# targets need, each under its own share of a total time limit, each writing its JSON as it goes
# (benchmarks/gpu_step.py rewrites its file after every trainer / variant), so a cut-off call still returns what it
# finished; at the end every part's JSON is merged into $OUT/gpu_step.json.
#
#   1. train512  hw + (a) trl.GRPOTrainer, (b) ProRLTrainer, (c) ProRLTrainer + static backend at L=512: the
#                ratios (b)/(a) <= 1.03 and (a)/(c) >= 2.5, generation speed-up, MFU      (~4 min on an H100)
#   2. gen       generation alone, HF generate vs the static backend at L=512 and 2048, decode step vs its
#                memory-bandwidth floor                                                      (~3 min)
#   3. train2048 training-phase MFU at L=2048, static backend, then + fused AdamW + micro-batch 32, then fused AdamW
#                + selective checkpointing of every 2nd layer (what time is left)
#
# On the device machine (the run tool, carry [".whl"], timeout_s 600; wheels: benchmarks/README_gpu.md):
#     bash benchmarks/gpu_issue7.sh
# On CPU, the same plan on gpu_step.py's tiny smoke shape (what tests/test_generation_benchmark.py runs):
#     SMOKE=1 OUT=/tmp/g7 PYTHON=.venv/bin/python bash benchmarks/gpu_issue7.sh
set -uo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder for the results (the run tool sets it)}"
PYTHON=${PYTHON:-python3}
TOTAL_S=${TOTAL_S:-560}   # the whole call; the run tool's limit is 600 s and the wheel install comes first
PARTS=${PARTS:-train512,gen,train2048}   # a rerun of what a cut-off call missed: PARTS=train2048
start=$(date +%s)
mkdir -p "$OUT"

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "gpu_issue7: installing .whl/ failed" >&2; exit 2; }
  export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.csv"

SMOKE_ARGS=()
LONG_TRAINERS=prorl_static,prorl_static+fused+mb32,prorl_static+fused+ckpt2
if [ "${SMOKE:-0}" = 1 ]; then  # the smoke shape has 8 completions a step: no micro-batch of 32
  SMOKE_ARGS=(--smoke); LONG_TRAINERS=prorl_static,prorl_static+fused+ckpt2
fi

# run_part NAME SHARE_S ARGS...: at most SHARE_S seconds, and never past TOTAL_S; skipped under 30 s left.
run_part() {
  local name=$1 share=$2; shift 2
  case ",$PARTS," in *",$name,"*) ;; *) return ;; esac
  local left=$(( TOTAL_S - ($(date +%s) - start) - 10 ))
  local limit=$(( share < left ? share : left ))
  if [ "$limit" -lt 30 ]; then
    echo "gpu_issue7: $name skipped ($left s left)" | tee -a "$OUT/parts.log"; return
  fi
  echo "gpu_issue7: $name (limit ${limit} s): $*" | tee -a "$OUT/parts.log"
  local t0=$(date +%s)
  timeout --signal=TERM --kill-after=10 "$limit" "$PYTHON" benchmarks/gpu_step.py "${SMOKE_ARGS[@]}" "$@" \
    --out "$OUT/$name.json" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "gpu_issue7: $name rc $rc in $(( $(date +%s) - t0 )) s" | tee -a "$OUT/parts.log"
  grep -E "^(hw|gen|train|ratios)" "$OUT/$name.log" || tail -5 "$OUT/$name.log"
}

run_part train512 300 --parts hw,train --length 512 --trainers trl,prorl,prorl_static --steps 3
run_part gen 200 --parts hw,gen --gen-lengths 512,2048 --variants hf,static
run_part train2048 400 --parts hw,train --length 2048 --trainers $LONG_TRAINERS --steps 2

"$PYTHON" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
merged = {}
for name in ("train512", "gen", "train2048"):
    f = out / f"{name}.json"
    if f.exists():
        try:
            merged[name] = json.loads(f.read_text())
        except json.JSONDecodeError as e:  # killed mid-write: keep the others
            merged[name] = {"error": f"{f.name}: {e}"}
(out / "gpu_step.json").write_text(json.dumps(merged, indent=1) + "\n")
print("gpu_issue7: merged", sorted(merged), "into", out / "gpu_step.json")
EOF
echo "gpu_issue7: $(( $(date +%s) - start )) s in all"
