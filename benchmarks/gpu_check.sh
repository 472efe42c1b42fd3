#!/usr/bin/env bash
# The GPU check (about 6 minutes on one H100): model speed, decode speed and the end-to-end data wait.
#
#   bash benchmarks/gpu_check.sh            # writes benchmarks/results/<gpu>_<yyyymm>.md
#
# 1. ViT-B compiled step: samples/s and MFU for image (90%) and video (95%) batches, bf16, synthetic input.
# 2. DALI mixed (NVDEC) vs CPU decode clips/s for VP9 and H.264, and batch assembly on the GPU
#    (skipped with a line where DALI or CUDA is missing).
# 3. End to end: the trainer on generated SSv2-like videos, replication 1 and 4, and the share of the
#    step it waited for data (from the run's summary).
# On a machine without CUDA every GPU part is skipped with a message and the script exits 0.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
PY=${PYTHON:-python3}
OUT=${OUT:-benchmarks/out/gpu_check}
mkdir -p "$OUT" benchmarks/results

has_cuda=$($PY -c "import torch; print(int(torch.cuda.is_available()))")
gpu=$($PY -c "import torch; print(torch.cuda.get_device_name(0).replace(' ', '_') if torch.cuda.is_available() else 'cpu')")
report="benchmarks/results/${gpu}_$(date +%Y%m).md"
[ "$has_cuda" = 1 ] || report="$OUT/cpu_$(date +%Y%m).md"

{
  echo "# GPU check: $gpu, $(date -u +%Y-%m-%d)"
  echo
  echo '```'
  $PY -c "import torch, platform; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'python', platform.python_version())"
  $PY -c "import nvidia.dali as d; print('dali', d.__version__)" 2>/dev/null || echo "dali: not installed"
  $PY -c "import av; print('av', av.__version__)" 2>/dev/null || echo "av: not installed"
  echo '```'
} > "$report"

section() { echo; echo "## $1"; echo; } >> "$report"

if [ "$has_cuda" != 1 ]; then
  echo "no CUDA device: GPU parts skipped (the CPU parts of each benchmark run on their own scripts)" | tee -a "$report"
  exit 0
fi

section "1. ViT-B step time, compiled, bf16, synthetic input"
timeout 240 $PY benchmarks/step_time.py --model base --device cuda --compile on --precision bf16 \
  --batch 256 --steps 20 --warmup 5 --out "$OUT/step_time.json" 2>&1 | tee -a "$report" | tail -n 30

section "2. Decode: DALI mixed vs CPU, and GPU batch assembly"
timeout 150 $PY benchmarks/gpu_decode_check.py 2>&1 | tee -a "$report" | tail -n 30

section "3. End to end: data-wait share of the step, replication 1 and 4 (ViT-B, generated VP9 videos)"
data=$OUT/ssv2_synth
if [ ! -f "$data/manifest_train.jsonl" ]; then
  $PY -m loaders.cli synth video "$data" --train 256 --val 8 --workers 8 >/dev/null 2>&1
  $PY -m loaders.cli index "$data" --split train >/dev/null
fi
for rep in 1 4; do
  timeout 150 $PY -m omnimae.cli configs/ssv2_rep4.yaml data.video.root="$data" data.video.replication=$rep \
    train.batch_size=256 train.max_steps=40 train.log_every=10 train.ckpt_every=0 train.resume=never \
    train.out_dir="$OUT/runs" train.run_name=rep$rep data.decode_threads=8 >"$OUT/rep$rep.log" 2>&1
  $PY - "$OUT/runs/rep$rep" "$rep" <<'EOF' | tee -a "$report"
import json, sys
from pathlib import Path
run, rep = Path(sys.argv[1]), sys.argv[2]
try:
    s = json.loads((run / "summary.json").read_text())
    last = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()][-1]
    wait = s["stage_seconds"].get("data_wait", 0.0) / s["wall_s"]
    print(f"replication {rep}: {last['samples_per_s']:.0f} samples/s, {last['videos_decoded_per_s']:.0f} videos/s, "
          f"data wait {wait:.1%} of the run, bottleneck {s['bottleneck']}")
except Exception as e:  # a failed run is reported, not fatal
    print(f"replication {rep}: run failed ({type(e).__name__}: {e}); see {run}.log")
EOF
done
echo
echo "report: $report"
