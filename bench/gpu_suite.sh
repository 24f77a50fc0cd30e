#!/usr/bin/env bash
# The GPU checks: a few short runs on one GPU machine (docs/BENCHMARKS.md).
#
#   bash bench/gpu_suite.sh [info] [tests] [loading] [relink] [scale] [probe] [recompute]   (default: these seven in this
#   order; info..scale take about 4 min on an H200, recompute up to 5.5 min more: with
#   little time, run `info tests loading relink scale`) and the older parts on request: [embed] [dp] [demo]
#   [distributed]
#     info: GPU, cores, package versions; tests: the CUDA tests (engine on the GPU = CPU; nvJPEG path = reference);
#     loading: real-size JPEG loading CPU vs PIL, nvJPEG, ViT-B/16 end to end: the old per-batch loop, then
#       the project's, then CPU shares 0.25 and 0.4 (bench/bench_loading.py);
#     relink: the whole curve on CUDA vs one CUDA matmul of its shape, 43,793 x 21,896 (bench/bench_relink.py);
#     recompute: the dashboard's Recompute (demo audit + sweep, model cached) three times (bench/demo_recompute.py);
#     scale: the curve at 43,793 x 400,000 on CUDA (relink and scale: --profile, the top functions by time);
#     probe: the sweep's 14 linear probes, scikit-learn on the CPU vs the torch Newton solver on CUDA (bench/bench_probe.py);
#     embed: ViT-B-16 images/s in fp32/fp16/bf16 (bench/gpu_embed.py);
#     dp: the DP tests on CUDA, then DP epoch vs non-private epoch (bench/bench_dp.py, 128-d and 768-d heads);
#     demo: demo-training scan on the GPU (bench/demo_scan.py), then the end-to-end demo audit with --device cuda
#     distributed: the audit from an empty cache, one process on one GPU against torchrun with one rank per GPU
#       (bench/distributed.py; needs 2 GPUs or more)
#
# Python packages the GPU machine lacks can be put in .whl/ as wheels (git-ignored): they are installed first.
# Every step has its own time limit and writes its full output to $OUT/<step>.txt; a failed step does not
# stop the next one. On a machine without CUDA the GPU steps say so and measure nothing.
set -u
OUT=${OUT:-/tmp/gpu-suite}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
  export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 CXR_CACHE_DIR=${CXR_CACHE_DIR:-/tmp/cxr-gpu-cache}
PY=${PY:-python3}

step() {  # step NAME LIMIT_S CMD...
  local name=$1 limit=$2 start rc
  shift 2
  start=$(date +%s)
  timeout "$limit" "$@" >"$OUT/$name.txt" 2>&1
  rc=$?
  echo "== $name: rc=$rc, $(($(date +%s) - start)) s"
  grep -v -i "warn\|Location" "$OUT/$name.txt" | tail -n 14
}

info() {
  { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
    nproc
    $PY -c "import torch, open_clip, opacus, pandas, numpy, sklearn; print('torch', torch.__version__, 'cuda', \
torch.cuda.is_available(), 'open_clip', open_clip.__version__, 'opacus', opacus.__version__, 'pandas', \
pandas.__version__, 'numpy', numpy.__version__)"; } 2>&1 | tee "$OUT/device.txt"
}

parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(info tests loading relink scale probe recompute)  # the figures not yet measured on a GPU first
for part in "${parts[@]}"; do
  case "$part" in
    info) info ;;
    tests) step pytest_cuda 120 $PY -m pytest -q -p no:cacheprovider -o addopts="" tests/test_relink.py \
             tests/test_images.py tests/test_probe.py -k "cuda or nvjpeg or torch" ;;
    loading) step loading 150 $PY -m bench.bench_loading --n 64 --png 32 --e2e 4096 --batch 256 --json ;;
    relink) step relink 150 $PY -m bench.bench_relink --device cuda --n 43793 --skip-sampling --profile ;;
    recompute)
      step recompute 330 bash -c "$PY -m backend prepare-demo --device cuda && \
        $PY -m bench.demo_recompute --repeats 3 --timeline --json $OUT/recompute.jsonl" ;;
    probe) step probe 90 $PY -m bench.bench_probe --device cuda --json ;;
    scale) step scale 200 $PY -m bench.bench_relink --device cuda --n --scale --skip-sampling --profile ;;
    embed) step gpu_embed 90 $PY -m bench.gpu_embed --batch-size 256 --batches 20 ;;
    dp)
      step pytest_cuda 120 $PY -m pytest -q -p no:cacheprovider -o addopts="" tests/test_dp.py \
        -k "cuda or fast_path or seeded"
      step bench_dp_128 90 $PY -m bench.bench_dp --n 100000 --batch 1024 --repeats 3
      step bench_dp_768 100 $PY -m bench.bench_dp --n 100000 --batch 1024 --d-img 768 --d-txt 768 --d 512 --repeats 2
      ;;
    demo)
      step demo_scan 240 $PY -m bench.demo_scan --device cuda --epochs 4 8 16 --n-bootstrap 50 \
        --json "$OUT/demo_scan.json"
      step demo_e2e 180 bash -c "$PY -m backend prepare-demo --device cuda && \
        $PY -m backend audit --source synthetic --model demo --device cuda --json $OUT/audit_cuda.json"
      ;;
    distributed)
      gpus=$(nvidia-smi -L 2>/dev/null | wc -l)
      if [ "$gpus" -lt 2 ]; then echo "== distributed: needs 2 GPUs or more, this machine has $gpus"
      else step distributed 300 $PY -m bench.distributed --patients 3000 --device cuda --nproc "$gpus" --json; fi
      ;;
    *) echo "usage: bash bench/gpu_suite.sh [info] [tests] [probe] [loading] [relink] [recompute] [scale] [embed] [dp] [demo] [distributed]"; exit 2 ;;
  esac
done
