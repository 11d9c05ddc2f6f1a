#!/usr/bin/env bash
# Every GPU check in one run on one CUDA GPU: the GPU tests, the fused GDN kernel benchmark, and the streaming,
# memory, diffusers-comparison, quantization and torch.compile benchmarks of sana-wm-1.6b at 704x1280 bf16.
#
#   bash benchmarks/gpu_checks.sh OUTDIR            # about 10 minutes on one H200
#   PYTHON=.venv/bin/python bash benchmarks/gpu_checks.sh OUTDIR
#
# Needs: a CUDA build of torch with triton, `pip install -e ".[gpu,quant]"` (or the same packages on PYTHONPATH),
# pytest and pytest-xdist. Run from the repository root.
#
# STEPS picks steps (default: all four, "tests gdn_kernels gpu_streaming gpu_compile"); GDN_ARGS and STREAM_ARGS
# replace the default arguments of the two benchmarks (e.g. STREAM_ARGS="--cases stream clip60").
#
# OUTDIR gets: environment.txt (GPU, driver, versions), tests.txt (pytest output), gdn_kernels.json/.txt,
# gpu_streaming.json/.txt and gpu_compile.json/.txt. Every step has its own time limit (seconds; the
# LIMIT_* variables below), so one slow step cannot lose the results of the others; the benchmark JSONs are
# rewritten after every case, so a step stopped at its limit keeps the cases it finished.
set -u
out=${1:?usage: bash benchmarks/gpu_checks.sh OUTDIR}
mkdir -p "$out"
: >"$out/summary.txt"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
: "${LIMIT_TESTS:=150}" "${LIMIT_GDN:=60}" "${LIMIT_STREAM:=200}" "${LIMIT_COMPILE:=300}" "${XDIST_WORKERS:=8}"
: "${STEPS:=tests gdn_kernels gpu_streaming gpu_compile}"
: "${GDN_ARGS:=--precisions ieee tf32 bf16 --repeats 5}"
: "${STREAM_ARGS:=--cases stream clip60 memory quant compare attention --lengths 10 60 --timed-chunks 5 --repeats 2}"

step() {  # step NAME LIMIT_SECONDS COMMAND...: run with a time limit, keep the output, print its tail
  local name=$1 limit=$2 t0=$SECONDS rc
  shift 2
  [[ " $STEPS " == *" $name "* ]] || return 0
  echo "== $name (limit ${limit} s): $*"
  timeout --signal=INT --kill-after=20 "$limit" "$@" >"$out/$name.txt" 2>&1
  rc=$?
  echo "== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$out/summary.txt"
  tail -n "${TAIL_LINES:-30}" "$out/$name.txt"
}

{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  "$PY" - <<'EOF'
import importlib.metadata as md, platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| cudnn", torch.backends.cudnn.version())
for dist in ("triton", "diffusers", "nvidia-modelopt", "transformers", "pytest", "pytest-xdist"):
    try:
        print(dist, md.version(dist))
    except md.PackageNotFoundError:
        print(dist, "not installed")
print("device", torch.cuda.get_device_name(), torch.cuda.get_device_capability())
EOF
} >"$out/environment.txt" 2>&1
cat "$out/environment.txt"

# ModelOpt builds its FP8 / INT8 fake-quant CUDA extensions with nvcc on first use (about a minute): build them
# now, beside the tests, instead of inside a timed step (torch's extension lock makes later users wait for it).
"$PY" -c "from modelopt.torch.quantization.extensions import get_cuda_ext, get_cuda_ext_fp8
get_cuda_ext(); get_cuda_ext_fp8()" >"$out/modelopt_extensions.txt" 2>&1 &
ext_pid=$!

parallel=()  # pytest-xdist: the Triton kernels' compilations spread over the CPU cores
"$PY" -c "import xdist" 2>/dev/null && parallel=(-n "$XDIST_WORKERS")
step tests "$LIMIT_TESTS" "$PY" -m pytest -q -rfEs --durations=15 "${parallel[@]}" -p no:cacheprovider \
  tests/test_triton_kernels.py tests/test_gpu_fast_path.py tests/test_quantization.py
wait "$ext_pid"

# shellcheck disable=SC2086 # GDN_ARGS / STREAM_ARGS are word lists
step gdn_kernels "$LIMIT_GDN" "$PY" benchmarks/bench_gdn_kernels.py $GDN_ARGS --json "$out/gdn_kernels.json"

# shellcheck disable=SC2086
step gpu_streaming "$LIMIT_STREAM" "$PY" benchmarks/bench_gpu_streaming.py $STREAM_ARGS --json "$out/gpu_streaming.json"

# torch.compile (inductor, CUDA graphs) on the first 4 blocks: inductor compiles one graph per pass kind and cache
# fill level (over a minute of compiling on an H200 for these 4 blocks) and its time grows with depth; the
# per-block speed-up carries over to the full model
step gpu_compile "$LIMIT_COMPILE" "$PY" benchmarks/bench_gpu_streaming.py --cases compile --depth 4 \
  --compile-modes off reduce-overhead --timed-chunks 5 --json "$out/gpu_compile.json"
cat "$out/summary.txt"
