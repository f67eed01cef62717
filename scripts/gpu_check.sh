#!/usr/bin/env bash
# GPU check: model_opt against a real NVIDIA GPU and driver, in one run of at most 8 minutes, with one
# JSON report. Written where there is no GPU: it has never run on one. The checks:
#   rust_cuda_real  cargo test --release --test runtime_cuda_real: CudaBackend and the Runtime on the
#                   real driver (alloc/free, cuMemcpy write and read back, OOM as an error, record /
#                   plan / replay of random steps with every buffer's bytes checked on the device; a
#                   fresh thread left with no current context; a stream capturing a CUDA graph refused)
#   pytest_cuda_path tests/python/test_cuda_path.py (issue 17, items 1-4): a memory limit,
#                   set_per_process_memory_fraction and the device's own size each raise
#                   torch.OutOfMemoryError through the C++ front and the runtime goes on; plan() and
#                   empty_cache() leave the caller's current device/context alone (two GPUs: after
#                   set_device(1)); a torch.cuda.graph capture served from its private pool (the
#                   replay's values right, eager tensors made after it untouched, the pool given
#                   back when the graph is deleted). The
#                   front is compiled here first (about a minute on few cores), then cached.
#   pytest_cuda     tests/python/test_cuda.py: model_opt.allocator() installed before CUDA starts; a
#                   planned torchvision resnet18 and a small random-init GPT-2 on the GPU, zero
#                   divergences, losses equal to PyTorch's own allocator's within 1e-4, and the memory
#                   model_opt holds next to PyTorch's peak reservation (reported); a step that spills
#                   activations to pinned host memory on a copy stream (optimize(allow=("reorder",
#                   "spill"))) against eager: same losses, and its peak of allocated bytes below the
#                   order-only step's (both reported)
#   demo_cuda       model-opt demo --device cuda (the main job, on the GPU)
#
# Assumptions about the machine:
#   - Linux x86_64, an NVIDIA GPU and its driver (libcuda.so.1; nvidia-smi is used when present).
#   - Python 3.9+ with the CUDA build of PyTorch (torchvision; transformers optional, for GPT-2):
#     either ./.venv already has it (scripts/setup.sh was run), or the interpreter $PYTHON (default
#     python3) has it, and .venv is created from it with --system-site-packages so that torch is used
#     as it is (scripts/setup.sh then installs only what is missing; it never replaces that torch).
#   - Rust (cargo), cmake, g++ and libclang-dev for the build, and maturin, pytest and ninja: installed,
#     or reachable (apt, PyPI, crates.io) for scripts/setup.sh. Offline, they must be there already,
#     and the crates in ~/.cargo/registry.
#   - Many cores: CARGO_BUILD_JOBS defaults to all of them (a first build takes a few minutes; the
#     8 minutes include it).
#
# Usage: scripts/gpu_check.sh [--report PATH]
#   The report defaults to $OUT/gpu_check.json when $OUT is a directory, else out/gpu_check.json:
#   {"passed", "gpu", "torch", "checks": [{"name", "passed", "seconds", "details"}, ...]}.
# Exit status: 0 when every check passed; 1 when one failed (see the report); 2 when there is no
# NVIDIA GPU or driver (one line on stderr: "no NVIDIA GPU/driver found: ...") or the set-up failed.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

START=$(date +%s)
BUDGET_S=${GPU_CHECK_BUDGET_S:-470} # 8 minutes, less time to write the report
DEADLINE=$((START + BUDGET_S))
if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then REPORT="$OUT/gpu_check.json"; else REPORT="$ROOT/out/gpu_check.json"; fi
while [ $# -gt 0 ]; do
    case "$1" in
        --report) REPORT="$2"; shift 2 ;;
        -h | --help) sed -n '2,/^set /{/^set /!s/^# \{0,1\}//p}' "$0"; exit 0 ;;
        *) echo "gpu_check: unknown argument $1 (use --report PATH)" >&2; exit 2 ;;
    esac
done
mkdir -p "$(dirname "$REPORT")"
REPORT="$(cd "$(dirname "$REPORT")" && pwd)/$(basename "$REPORT")"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
: >"$WORK/results"
PYTHON=${PYTHON:-python3}

say() { printf '[gpu_check] %s\n' "$*" >&2; }

# Appends one check's outcome: name, exit status, seconds (its log is $WORK/NAME.log).
record() { printf '%s %s %s\n' "$1" "$2" "$3" >>"$WORK/results"; }

write_report() {
    local py="$ROOT/.venv/bin/python"
    [ -x "$py" ] || py="$PYTHON"
    "$py" - "$WORK" "$REPORT" <<'PYEOF' || say "could not write the report $REPORT"
import json, pathlib, sys
work, report = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
def text(name, tail=6000):
    p = work / name
    return p.read_text(errors="replace")[-tail:] if p.is_file() else ""
checks = []
for line in text("results", 10**6).splitlines():
    name, rc, secs = line.split()
    details = {"exit_status": int(rc), "output_tail": text(f"{name}.log")}
    if int(rc) in (124, 137):
        details["timed_out"] = True
    for j in sorted((work / name).glob("*.json")) if (work / name).is_dir() else []:
        try:
            details[j.stem] = json.loads(j.read_text())
        except ValueError:
            details[j.stem] = j.read_text()[-2000:]
    checks.append({"name": name, "passed": int(rc) == 0, "seconds": round(float(secs), 1), "details": details})
out = {
    "passed": bool(checks) and all(c["passed"] for c in checks),
    "gpu": text("gpu.txt").strip(),
    "torch": text("torch.txt").strip(),
    "checks": checks,
}
report.write_text(json.dumps(out, indent=1))
PYEOF
    say "report: $REPORT"
}

# Runs one check under a time limit (never past the deadline): run_check NAME LIMIT_S COMMAND...
run_check() {
    local name=$1 limit=$2
    shift 2
    local left=$((DEADLINE - $(date +%s)))
    ((left < limit)) && limit=$left
    if ((limit < 15)); then
        echo "not run: the time budget (${BUDGET_S} s) was spent" >"$WORK/$name.log"
        record "$name" 124 0
        say "$name: not run (time budget spent)"
        return
    fi
    mkdir -p "$WORK/$name"
    say "$name (at most ${limit} s)"
    local t0 rc ms
    t0=$(date +%s%N)
    timeout --kill-after=10 "$limit" "$@" >"$WORK/$name.log" 2>&1
    rc=$?
    ms=$((($(date +%s%N) - t0) / 1000000))
    record "$name" "$rc" "$((ms / 1000)).$(printf '%03d' $((ms % 1000)))"
    if [ "$rc" -eq 0 ]; then say "$name: passed"; else say "$name: FAILED (exit $rc; log in the report)"; fi
}

# 1. Is there a GPU? Decided before any set-up, from the driver itself.
no_gpu() {
    echo "no NVIDIA GPU/driver found: $(echo "$*" | tr '\n' ' ' | sed 's/  */ /g; s/ $//')" >"$WORK/gpu.log"
    record gpu 2 0
    write_report >/dev/null 2>&1
    cat "$WORK/gpu.log" >&2
    exit 2
}
gpu_line=""
if command -v nvidia-smi >/dev/null 2>&1; then
    gpu_line=$(timeout 30 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1) \
        || no_gpu "nvidia-smi failed: $gpu_line"
    [ -n "$gpu_line" ] || no_gpu "nvidia-smi lists no GPU"
fi
command -v "$PYTHON" >/dev/null 2>&1 || no_gpu "no Python ($PYTHON) to probe libcuda with; set PYTHON"
probe=$(timeout 60 "$PYTHON" - 2>&1 <<'PYEOF'
import ctypes, sys
try:
    cuda = ctypes.CDLL("libcuda.so.1")
except OSError as e:
    sys.exit(f"libcuda.so.1 cannot be loaded ({e})")
r = cuda.cuInit(0)
if r != 0:
    sys.exit(f"cuInit failed with CUresult {r} (100 = no device)")
n = ctypes.c_int(0)
r = cuda.cuDeviceGetCount(ctypes.byref(n))
if r != 0 or n.value < 1:
    sys.exit(f"cuDeviceGetCount returned {r} with {n.value} devices")
print(f"{n.value} device(s)")
PYEOF
) || no_gpu "$probe"
echo "${gpu_line:-unknown GPU}; driver API: $probe" >"$WORK/gpu.txt"
say "GPU: $(cat "$WORK/gpu.txt")"

# 2. Set-up: .venv with the machine's CUDA PyTorch, and this tree built into it.
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-$(nproc)}
# shellcheck disable=SC2317  # run through `bash -c setup` under timeout
setup() {
    set -euo pipefail
    cd "$ROOT"
    if [ ! -x .venv/bin/python ]; then
        say "creating .venv from $PYTHON with --system-site-packages (to use its CUDA PyTorch)"
        "$PYTHON" -m venv --system-site-packages .venv
    fi
    if .venv/bin/python -c 'import maturin, pytest, ninja, torch, torchvision' >/dev/null 2>&1; then
        VIRTUAL_ENV="$ROOT/.venv" .venv/bin/maturin develop --release --quiet
    else
        ./scripts/setup.sh
    fi
    .venv/bin/python - <<'PYEOF'
import sys, torch, model_opt._native
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, available {torch.cuda.is_available()}")
if torch.version.cuda is None or not torch.cuda.is_available():
    sys.exit(f"the PyTorch in .venv (torch {torch.__version__}, CUDA {torch.version.cuda}) cannot use the GPU: "
             "install the CUDA build of PyTorch for this driver (or point PYTHON at an interpreter that has it, "
             "and remove .venv)")
PYEOF
}
export ROOT PYTHON
export -f setup say
run_check setup 360 bash -c setup
if ! tail -n 1 "$WORK/results" | grep -q '^setup 0 '; then
    write_report
    echo "gpu_check: set-up failed: $(grep -v '^\s*$' "$WORK/setup.log" | tail -n 1)" >&2
    exit 2
fi
grep '^torch ' "$WORK/setup.log" | tail -n 1 >"$WORK/torch.txt"

# 3. The checks.
run_check rust_cuda_real 240 env MODEL_OPT_REQUIRE_CUDA=1 \
    cargo test --release --test runtime_cuda_real -- --nocapture --test-threads=1
run_check pytest_cuda_path 180 env MODEL_OPT_REQUIRE_CUDA=1 MODEL_OPT_GPU_REPORT_DIR="$WORK/pytest_cuda_path" \
    .venv/bin/python -m pytest -v -s -rs tests/python/test_cuda_path.py
run_check pytest_cuda 300 env MODEL_OPT_REQUIRE_CUDA=1 MODEL_OPT_GPU_REPORT_DIR="$WORK/pytest_cuda" \
    .venv/bin/python -m pytest -v -s -rs tests/python/test_cuda.py
run_check demo_cuda 180 .venv/bin/model-opt demo --device cuda --json "$WORK/demo_cuda/demo.json"

write_report
if awk '$2 != 0 { bad = 1 } END { exit bad }' "$WORK/results"; then
    say "all checks passed in $(($(date +%s) - START)) s"
    exit 0
fi
say "some checks failed: $(awk '$2 != 0 { printf "%s ", $1 }' "$WORK/results")"
exit 1
