#!/usr/bin/env bash
# The GPU check: model speed, decode speed and the end-to-end data wait. In all about 15 minutes on
# one H100 (sections 1: ~9 min, 2: ~5.5, 3: ~2): more than one 10-minute device call, so run the
# sections in separate calls (GPU_CHECK_SECTIONS=1, =2, =3).
#
#   bash benchmarks/gpu_check.sh                      # on a GPU: writes benchmarks/results/<gpu>_<yyyymm>.md
#   GPU_CHECK_DRYRUN=1 bash benchmarks/gpu_check.sh   # on the CPU: every section with a tiny model, to
#                                                     # catch a typo before it costs a GPU run
#
# 1. ViT-B compiled step: samples/s and MFU for image (90%) and video (95%) batches, bf16, synthetic
#    input, the fast forward beside the reference one; then the speed options (6 decoder heads,
#    CUDA graphs for images).
# 2. benchmarks/gpu_decode_check.py (~5.5 min): NVDEC / DALI mixed / PyAV clips/s for H.264 and VP9
#    at 240-720p, GPU JPEG vs CPU images/s; writes the decode table `data.decode_backend=auto` reads
#    (rows skipped with a reason where PyNvVideoCodec, DALI or CUDA is missing).
# 3. End to end: the trainer on generated SSv2-like H.264 videos (a codec NVDEC surely takes),
#    replication 1 and 4, and the share of the step it waited for data.
# 4. (only when asked: GPU_CHECK_SECTIONS=4, ~8 min) Transfer: the demo pretraining (configs/demo.yaml,
#    15 s), then benchmarks/transfer_evidence.py (configs/ft_motion.yaml, which takes an hour on 2 CPU
#    cores; GPU_CHECK_FT_EPOCHS, default 40: ~200 s per arm on an H100), for each fine-tune seed in
#    GPU_CHECK_FT_SEEDS (default 0: one pair fits one 10-minute device call) under its own limit.
# Each section runs under its own timeout and a failed section is reported, not fatal, so one
# broken part does not cost the others. The report and the logs are written under $OUT as they are
# made (on the device machine only $OUT comes back, at most 8 files: keep GPU_CHECK_WORK outside it).
# On a machine without CUDA (and without GPU_CHECK_DRYRUN=1) the script says so and exits 0.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
OUT=${OUT:-benchmarks/out/gpu_check}
# Generated data and training runs (checkpoints) go to WORK, so $OUT holds only the report and logs.
WORK=${GPU_CHECK_WORK:-$OUT/work}
mkdir -p "$OUT" "$WORK"
dry=${GPU_CHECK_DRYRUN:-0}
sections=${GPU_CHECK_SECTIONS:-123}  # which sections to run, e.g. 3 for the end-to-end runs alone, 4 for transfer
backend=${GPU_CHECK_E2E_BACKEND:-auto}  # data.decode_backend of the end-to-end runs

has_cuda=$($PY -c "import torch; print(int(torch.cuda.is_available()))")
gpu=$($PY -c "import torch; print(torch.cuda.get_device_name(0).replace(' ', '_') if torch.cuda.is_available() else 'cpu')")
# Another section choice than the default gets its own report name (section 4 alone: ..._s4.md).
report="$OUT/${gpu}_$(date +%Y%m)$([ "$sections" = 123 ] || echo "_s$sections").md"
started=$(date +%s)

if [ "$has_cuda" = 1 ] && [ "$dry" != 1 ]; then
  # ViT-B at the batch sizes of one GPU of the paper's runs (per-GPU batch 2048 / 8 nodes / 8 GPUs
  # would be 32; we use larger batches so the step time is measured where MFU means something).
  threads=$(( $(nproc) > 16 ? 16 : $(nproc) ))
  device=cuda model=base step_batch=256 e2e_batch=128 e2e_steps=30 videos=256
  step_args=(--compile on --precision bf16 --steps 15 --warmup 4)
  t_step=330 t_speed=200 t_decode=330 fast_heads=6 decode_args=(--budget-s 300) t_e2e=${GPU_CHECK_E2E_LIMIT:-100}
  # Section 4: the demo as it is; fine-tunes on the 1,000 / 200 generated motion videos.
  ft_epochs=${GPU_CHECK_FT_EPOCHS:-40} pre_extra=() ft_data=(--train-videos 1000 --val-videos 200)
  ft_seeds=${GPU_CHECK_FT_SEEDS:-0} t_pre=150 t_ft=${GPU_CHECK_FT_LIMIT:-480}
elif [ "$dry" = 1 ]; then
  threads=2 device=cpu model=debug step_batch=2 e2e_batch=8 e2e_steps=4 videos=16
  step_args=(--compile off --precision fp32 --steps 2 --warmup 1 --rounds 1 --img-size 64 --frames 4)
  t_step=120 t_speed=120 t_decode=120 fast_heads=2 decode_args=(--quick) t_e2e=150
  ft_epochs=1 pre_extra=(model.name=debug model.img_size=64 model.num_frames=4 train.max_steps=4)
  ft_data=(--train-videos 20 --val-videos 10) ft_seeds="0 1" t_pre=150 t_ft=150
else
  echo "no CUDA device: GPU parts skipped (GPU_CHECK_DRYRUN=1 runs every section on the CPU with a tiny model)"
  exit 0
fi

{
  echo "# GPU check: $gpu, $(date -u +%Y-%m-%d)${dry:+$( [ "$dry" = 1 ] && echo ' (CPU dry run, tiny model: not a measurement)')}"
  echo
  echo '```'
  $PY -c "import torch, platform, os; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'python', platform.python_version(), 'cpus', os.cpu_count())"
  $PY -c "import nvidia.dali as d; print('dali', d.__version__)" 2>/dev/null || echo "dali: not installed"
  $PY -c "import av; print('av', av.__version__)" 2>/dev/null || echo "av: not installed"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
  echo '```'
} > "$report"

section() { printf '\n## %s\n\n' "$1" >> "$report"; echo "== $1 ($(( $(date +%s) - started )) s)"; }
# run_part TIMEOUT LOG CMD...: the command's output goes to LOG and the report; a timeout or failure
# is written into the report with its exit status.
run_part() {
  local limit=$1 log=$2; shift 2
  echo '```' >> "$report"
  timeout -k 10 "$limit" "$@" > "$log" 2>&1
  local rc=$?
  grep -v -e '^W[0-9]' -e 'Warning' -e '^  warnings.warn' "$log" | tail -n 45 >> "$report"
  echo '```' >> "$report"
  [ $rc = 0 ] || echo "**exit status $rc$([ $rc = 124 ] && echo ": stopped at the ${limit} s limit")** (log: $(basename "$log"))" >> "$report"
  return 0
}

if [[ $sections == *1* ]]; then
section "1. ViT-B step time, compiled, bf16, synthetic input"
# The fast forward and the reference one side by side, each modality (the attention kernels timed).
run_part "$t_step" "$OUT/step_time.log" $PY benchmarks/step_time.py --model "$model" --device "$device" \
  --batch "$step_batch" "${step_args[@]}" --forward both --out "$OUT/step_time.json"
section "1b. The speed options: video with 6 decoder heads of dim 64, images with CUDA graphs"
run_part "$t_speed" "$OUT/step_time_options.log" bash -c "$PY benchmarks/step_time.py --model $model \
  --device $device --batch $step_batch ${step_args[*]} --forward fast --modality video --decoder-heads $fast_heads \
  && $PY benchmarks/step_time.py --model $model --device $device --batch $step_batch ${step_args[*]} \
  --forward fast --modality image --compile-mode reduce-overhead"
fi

if [[ $sections == *2* ]]; then
section "2. Decode: NVDEC, DALI mixed and PyAV; GPU JPEG vs CPU (the table auto reads)"
run_part "$t_decode" "$OUT/decode.log" $PY benchmarks/gpu_decode_check.py "${decode_args[@]}" --out-dir "$OUT"
fi

if [[ $sections == *3* ]]; then
section "3. End to end: data-wait share of the step, replication 1 and 4 ($model, generated H.264 videos, decode backend $backend)"
data=$WORK/ssv2_synth
if [ ! -f "$data/manifest_train.jsonl" ]; then
  $PY -m loaders.cli synth video "$data" --codec h264 --train "$videos" --val 0 --workers 8 --no-progress \
    >"$OUT/synth.log" 2>&1 && $PY -m loaders.cli index "$data" --split train >>"$OUT/synth.log" 2>&1 \
    || echo "data generation failed: $(tail -n 3 "$OUT/synth.log")" >> "$report"
fi
extra=()
[ "$dry" = 1 ] && extra=(model.name=debug model.img_size=64 model.num_frames=4 parallel.compile=false)
for rep in 1 4; do
  # -k: a run that ignores SIGTERM (it checkpoints first) is killed 20 s later.
  timeout -k 20 "$t_e2e" $PY -m omnimae.cli configs/ssv2_rep4.yaml data.video.root="$data" \
    data.video.replication=$rep train.batch_size="$e2e_batch" train.max_steps="$e2e_steps" train.log_every=5 \
    train.ckpt_every=0 train.resume=never train.out_dir="$WORK/runs" train.run_name="rep$rep" \
    data.decode_threads="$threads" data.decode_backend="$backend" "${extra[@]}" >"$OUT/e2e_rep$rep.log" 2>&1
  rc=$?
  $PY - "$WORK/runs/rep$rep" "$rep" "$rc" <<'EOF' | tee -a "$report"
import json, sys
from pathlib import Path
run, rep, rc = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
try:
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if l.strip()]
    rows = [r for r in rows if "samples_per_s" in r]
    tail = rows[1:] or rows  # the first logged interval holds the compile
    mean = lambda k: sum(r.get(k, 0.0) for r in tail) / len(tail)
    line = (f"- replication {rep}: {mean('samples_per_s'):.0f} samples/s, {mean('videos_decoded_per_s'):.0f} "
            f"videos/s, step {1000 * mean('step_time_s'):.0f} ms, data wait {mean('data_wait_share'):.1%} of the "
            f"step (steps {tail[0]['step']}-{tail[-1]['step']}); stages per step: read wait "
            f"{1000 * mean('stage/read_wait_s'):.0f} ms, decode {1000 * mean('stage/decode_s'):.0f} ms, "
            f"assembly {1000 * mean('stage/assembly_s'):.0f} ms")
    summary = run / "summary.json"
    if summary.exists():
        line += f"; bottleneck: {json.loads(summary.read_text()).get('bottleneck')}"
    if rc:
        line += f" (exit status {rc}{', stopped at the time limit' if rc == 124 else ''})"
    print(line)
except Exception as e:  # a failed run is reported, not fatal
    print(f"- replication {rep}: run failed, exit status {rc} ({type(e).__name__}: {e}); see e2e_rep{rep}.log")
EOF
  grep -e 'video decoder:' -e '^done:' -e 'Error' "$OUT/e2e_rep$rep.log" | sort -u | head -n 4 | sed 's/^/    /' >> "$report"
done
fi
if [[ $sections == *4* ]]; then
section "4. Transfer: the demo's pretrained encoder vs random init, fine-tuned $ft_epochs epochs"
# The demo pretraining as on the CPU (its data is generated on first use), on this device.
timeout -k 20 "$t_pre" $PY -m omnimae.cli configs/demo.yaml train.out_dir="$WORK/runs" train.run_name=demo \
  train.resume=never data.image.root="$WORK/demo/images" data.video.root="$WORK/demo/videos" \
  data.decode_threads="$threads" "${pre_extra[@]}" >"$OUT/transfer_pretrain.log" 2>&1 \
  || echo "**pretraining: exit status $?** (log: transfer_pretrain.log)" >> "$report"
ckpt=$(ls -d "$WORK"/runs/demo/step_* 2>/dev/null | tail -n 1)
grep -e '^done:' "$OUT/transfer_pretrain.log" | head -n 2 >> "$report"
if [ -n "$ckpt" ]; then
  # Both arms of one seed run back to back under one limit: a pair is complete or reported as cut.
  for i in $ft_seeds; do
    timeout -k 20 "$t_ft" $PY benchmarks/transfer_evidence.py "$ckpt" --seeds "$i" --data "$WORK/transfer" \
      "${ft_data[@]}" --workers "$threads" --out-dir "$WORK/runs/transfer" --out "$OUT/transfer_seed$i.json" \
      train.epochs="$ft_epochs" data.decode_threads="$threads" >"$OUT/transfer_seed$i.log" 2>&1
    rc=$?
    # The table and each arm's numbers (one JSON line per arm); progress bars stay in the log.
    { echo "fine-tune seed $i:"; echo '```'; grep -e '^{"init"' -e '^|' -e '^pretrained:' "$OUT/transfer_seed$i.log"
      echo '```'; } >> "$report"
    [ $rc = 0 ] || echo "**seed $i: exit status $rc$([ $rc = 124 ] && echo ": stopped at the ${t_ft} s limit")**" >> "$report"
  done
else
  echo "no pretrained checkpoint: fine-tunes skipped" >> "$report"
fi
fi
printf '\n(%s s in all)\n' "$(( $(date +%s) - started ))" >> "$report"
if [ "$has_cuda" = 1 ] && [ "$dry" != 1 ]; then
  mkdir -p benchmarks/results && cp "$report" benchmarks/results/
fi
echo
cat "$report"
echo "report: $report"
