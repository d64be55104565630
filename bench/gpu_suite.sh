#!/usr/bin/env bash
# Every GPU check of issue 16 in one call of the device tool (a lease is 15 minutes, its start included):
#
#   python bench/gpu_kit.py                                   # here: wheels + tokenizer into .gpu-kit/
#   run(command="bash bench/gpu_suite.sh", carry=[".gpu-kit"], timeout_s=570)
#
# Steps (each under its own time limit; a failed one is logged and the next runs):
#   gen_1b     the harness's evaluation pass vs bare generate, random-init 1B, batch 32, 64 new tokens
#   train_1b   LoRA vs QLoRA vs QLoRA + packing vs plain Trainer + peft, 1B, batch 8 x 256 (Liger if carried)
#   train_7b   QLoRA vs bf16 LoRA (plain Trainer + peft) peak memory, 7B shape, batch 4 x 256, 3 steps
#   e2e_1b     `adaptbench run bench/gpu_e2e.yaml` on the 1B checkpoint: prompt + a QLoRA adapter trained on
#              the GPU, the latency probe, the report; its summary and phases come back
# SUITE_STEPS="gen_1b e2e_1b" reruns some; SUITE_DEVICE=cpu SUITE_SMALL=1 is the dry run on a CPU (tiny model).
# Logs land in $OUT (the device tool's folder that comes back; ./gpu-suite-out elsewhere), at most 8 files.
set -u
REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$REPO/gpu-suite-out}
KIT=${GPU_KIT:-$REPO/.gpu-kit}
DEVICE=${SUITE_DEVICE:-cuda}
STEPS=${SUITE_STEPS:-gen_1b train_1b train_7b e2e_1b}
mkdir -p "$OUT"
cd "$REPO" || exit 1
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
export ADAPTBENCH_CACHE=${ADAPTBENCH_CACHE:-/tmp/adaptbench-gpu-cache}
PY=${PYTHON:-python3}

if [ -d "$KIT/wheels" ] && [ -z "${SUITE_NO_INSTALL:-}" ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu-site \
    "$KIT"/wheels/*.whl > "$OUT/env.txt" 2>&1 || { echo "wheel install failed"; cat "$OUT/env.txt"; exit 1; }
  export PYTHONPATH=/tmp/gpu-site:$REPO
else
  export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
fi
[ -f "$KIT/tokenizer/tokenizer_config.json" ] && export ADAPTBENCH_SHAPE_TOKENIZER=$KIT/tokenizer

{
  date -u; uname -m; nproc
  command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PY" - <<'EOF'
import importlib.metadata as md
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
for name in ("transformers", "accelerate", "peft", "trl", "bitsandbytes", "datasets", "pydantic", "liger-kernel",
             "flash-attn", "sentence-transformers"):
    try:
        print(name, md.version(name))
    except md.PackageNotFoundError:
        print(name, "-")
EOF
} >> "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

if [ -n "${SUITE_SMALL:-}" ]; then  # the dry run: the tiny model, a few rows
  SHAPE_GEN=(--shape tiny --n 8 --batch-size 4 --max-new-tokens 8 --single 1)
  TRAIN_1B=(--model tiny --steps 2 --batch-size 2 --max-len 64)
  TRAIN_7B=(--model tiny --steps 2 --batch-size 2 --max-len 64 --arms baseline,sft_qlora)
  E2E_SHAPE=tiny; E2E_LIMIT=8
else
  SHAPE_GEN=(--shape 1b --n 64 --batch-size 32 --max-new-tokens 64 --single 8)
  TRAIN_1B=(--shape 1b --steps 8 --batch-size 8 --max-len 256)
  TRAIN_7B=(--shape 7b --steps 3 --batch-size 4 --max-len 256 --arms baseline,sft_qlora)
  E2E_SHAPE=1b; E2E_LIMIT=92
fi

step() {  # step NAME SECONDS COMMAND...: log to $OUT/NAME.txt, never stop the suite
  local name=$1 limit=$2; shift 2
  case " $STEPS " in *" $name "*) ;; *) return 0 ;; esac
  local t0=$SECONDS
  echo "== $name (limit ${limit}s): $*" | tee "$OUT/$name.txt"
  timeout --kill-after=10 "$limit" "$@" >> "$OUT/$name.txt" 2>&1
  local rc=$?
  echo "== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$OUT/$name.txt" "$OUT/suite.txt"
  tail -n 25 "$OUT/$name.txt"
}

e2e() {  # run by `bash -c e2e` under timeout (exported below)
  local folder run=/tmp/gpu-e2e-run
  folder=$("$PY" -c "from bench.shapes import model_dir; print(model_dir('$E2E_SHAPE'))") || return 1
  rm -rf "$run"
  "$PY" -m harness.cli run bench/gpu_e2e.yaml --model "$folder" --limit "$E2E_LIMIT" --out "$run" --no-progress \
    || return 1
  "$PY" - "$run" <<'EOF'
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
m = json.loads((run / "manifest.json").read_text())
print("hardware:", json.dumps(m.get("hardware")))
for name, p in (m.get("phases") or {}).items():
    print(f"phase {name:<14} {p['seconds']:>8.1f} s  peak {p.get('peak_rss_bytes', 0) / 2**30:.2f} GiB RSS")
for sid, s in (m.get("strategies") or {}).items():
    cost = s.get("cost") or {}
    keep = ("prepare_seconds", "train_seconds", "peak_memory_bytes", "peak_rss_bytes")
    tps = (cost.get("training") or {}).get("tokens_per_s")
    print(sid, json.dumps({k: cost.get(k) for k in keep}), "training tokens/s:", tps)
print("".join((run / "summary.md").read_text().splitlines(keepends=True)[:16]))
EOF
}

export -f e2e
export PY E2E_SHAPE E2E_LIMIT
step gen_1b 110 "$PY" bench/bench_generation.py --device "$DEVICE" "${SHAPE_GEN[@]}"
LIGER=(); "$PY" -c "import liger_kernel" 2> /dev/null && [ "$DEVICE" = cuda ] && LIGER=(--liger)
step train_1b 140 "$PY" bench/bench_training.py --device "$DEVICE" "${TRAIN_1B[@]}" "${LIGER[@]}"
step train_7b 170 "$PY" bench/bench_training.py --device "$DEVICE" "${TRAIN_7B[@]}"
step e2e_1b 120 bash -c e2e
echo "== suite done; logs in $OUT" | tee -a "$OUT/suite.txt"
