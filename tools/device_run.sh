#!/usr/bin/env bash
# The GPU measurements of every issue, as run on the lent GPU machines (see tools/README.md).
#   bash tools/device_run.sh install-ov   # first call: carries .whl-ov alone (openvino, -telemetry, -tokenizers)
#   bash tools/device_run.sh issue3       # carries .whl: torch-cpu vs torch-cuda on two replicas
#   bash tools/device_run.sh issue4       # torch-cpu, torch-cuda, onnx-cpu, openvino-cpu on two replicas
#   bash tools/device_run.sh ort-part aa  # issue 8: each 55 MB part of onnxruntime-gpu in a call of its own,
#   bash tools/device_run.sh install-ort  #   then join, check and install (carry .ortparts/SHA256 and the last part)
#   bash tools/device_run.sh issue8-onnx  # onnx-cuda beside torch-cuda on codeparrot-small
#   bash tools/device_run.sh issue8-cv codeparrot-small   # torch-cuda and jit-cuda, 64 prompts x 5
#   bash tools/device_run.sh issue11-http # torch-cuda in-process vs over HTTP; the null engine's HTTP overhead
#   bash tools/device_run.sh issue17-http # keep-alive overhead table (cpu, torch-cuda, compile-cuda); compile's graphs under 1,000 lengths
#   bash tools/device_run.sh issue17-sweep codeparrot-small  # torch-cuda, compile-cuda over HTTP: closed:1 and a Poisson sweep
#   bash tools/device_run.sh issue10-probe cuda codeparrot-small graph inductor+graph  # compile modes vs torch
#   bash tools/device_run.sh issue8-threads  # onnx-cpu vs torch-cpu thread settings, fresh process each
#   bash tools/device_run.sh issue8-ortprof  # ONNX Runtime's operator profile; profiler after-effects
#   bash tools/device_run.sh issue10 codeparrot-small torch-cuda,jit-cuda,onnx-cuda,compile-cuda  # 64 prompts x 5
#   bash tools/device_run.sh issue9-calibrate 164 5 2 calib-gpu4 compile-cuda  # the gate's trials; again until all sessions ran
#   bash tools/device_run.sh issue16-calibrate torch-cuda 6 55 330  # sequential against interleaved A/B (tools/calibrate_ab.py)
#   bash tools/device_run.sh issue18-xdist 1   # on nvidia-h200-x2, carry .whl and .whl-xdist (pytest-xdist, execnet):
#   bash tools/device_run.sh issue18-xdist 2   #   the same items with -n 1, then -n 2 (a call each: 10-minute limit)
#   bash tools/device_run.sh issue18-compare   #   per item medians and GPU energy, -n 1 against -n 2, and the speed-up
#   bash tools/device_run.sh issue18-study 2   # the whole 12-replica study with -n 2, capped (a projection if cut)
#   bash tools/device_run.sh issue18-probe     # every replica x CUDA configuration once, 8 prompts: tools/project_study.py
#   bash tools/device_run.sh install-ov                        # issue 19, call 1: carry .whl-ov alone (58.2 MiB)
#   bash tools/device_run.sh issue19-engines codeparrot-small  # call 2, at once (same warm machine): carry .whl,
#     .whl-engines and .llama.cpp (52.3 MiB); ovgenai, llamacpp f16/q8_0 vs torch on the 16 cores
#   bash tools/device_run.sh issue19-engines tinyllama ortgenai-cpu,torch-cpu,torch-cuda  # ortgenai (llama; no openvino needed)
#   bash tools/device_run.sh issue19-quality codeparrot-small 64 3   # bf16 torch-cuda and compile-cuda, judged by quality
#   bash tools/device_run.sh issue19-paper codeparrot-small 64 3     # the paper's five configurations, then greenserve paper
#   bash tools/device_run.sh issue19-variants codeparrot-small bf16,fp32  # compile-cuda's inductor settings (tools/compile_variants.py)
#   onnx-cuda and ortgenai-cuda, on one warm machine (each call within 30 s of the last):
#   bash tools/device_run.sh ort-part aa ... ae; install-ort     # onnxruntime-gpu 1.31.1, as above
#   bash tools/device_run.sh install-ov                         # carry .whl-ov alone
#   bash tools/device_run.sh issue19-paper codeparrot-small 32 3  # carry .whl-engines: onnx-cuda in the paper's five
#   bash tools/device_run.sh issue19-genai tinyllama 16 2 bf16  # carry .whl-genai: ortgenai-cuda beside torch-cuda
#   bash tools/device_run.sh llamacpp-cuda-check mini-gpt2-f16.gguf  # carry .whl-llamacuda, .whl-llamacuda-test
#   bash tools/device_run.sh issue19-gemv starcoderbase-1b bf16  # carry .whl: the GEMVs' launch configurations, then the step
#   bash tools/device_run.sh issue19-rows starcoderbase-1b bf16 12  # carry .whl: the fused prefill's GEMMs, each configuration
#   bash tools/device_run.sh issue19-persistent  # carry .whl: the GEMV chain as kernels against one persistent kernel
#   bash tools/device_run.sh issue19-ab starcoderbase-1b bf16  # carry .whl and .whl-base: this checkout's step against an earlier commit's
#   bash tools/device_run.sh issue19-mlp  # the GEMV chain with the MLP's two GEMVs as one kernel (tools/mlp_probe.py)
#   bash tools/device_run.sh install-llamacuda; issue19-llamacuda codeparrot-small 32 2  # the CUDA llama.cpp in the plugin
#   bash tools/device_run.sh ort-part aa ... ad; install-ort; issue19-onnx starcoderbase-1b 16 1  # carry .whl-engines last
# DRY=1 runs a tiny CPU-only version of the same sessions locally to check the script.
# Each session is capped with SIGINT (pytest then finishes cleanly); finished samples are
# never lost. Results: one tarball of the report directories under $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/greenserve-out}; mkdir -p "$OUT"
SITE=/tmp/site; CACHE=${GREENSERVE_CACHE:-/tmp/gscache}; REPORTS=${GREENSERVE_REPORTS:-/tmp/greports}
PY=${PY:-python3}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

install() {  # wheels carried in folder $1 go to /tmp/site, which outlives calls while the machine is warm
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $SITE "$1"/*.whl || exit 3
}
export PYTHONPATH=$SITE:$PWD

cuda13_libs() {  # the CUDA 13 libraries torch's wheels bring (a CUDA llama-cpp-python links against them)
  echo "$($PY -c "import torch, os; print(os.path.dirname(os.path.dirname(torch.__file__)))")/nvidia/cu13/lib"
}

session() {  # session NAME CAP_S pytest-args...
  local name=$1 cap=$2; shift 2
  # not pip-installed there (no build backend offline): load the plugin by module name instead
  local plugin="-p pytest_greenserve.plugin"
  $PY -c "import importlib.metadata as m, sys; sys.exit(0 if any(e.name == 'greenserve' for e in m.entry_points(group='pytest11')) else 1)" && plugin=""
  echo "=== $name (cap ${cap}s) $(date +%T)"
  timeout -s INT -k 30 "$cap" $PY -m pytest benchmarks/test_autocomplete.py $plugin -q -rs \
    -p no:cacheprovider --greenserve-cache-dir=$CACHE --greenserve-report-dir=$REPORTS/$name \
    --greenserve-weights=replica "$@" 2>&1 | grep -vE "Warning|warnings.warn|^\s+(if|return|torch\.|with) " | tail -40
  echo "=== $name done $(date +%T)"
}

probe() {
  nvidia-smi --query-gpu=name,memory.total,driver_version,power.draw,power.limit --format=csv
  nproc; free -g | head -2
  $PY -c "import torch, transformers, sys; print(sys.version.split()[0], torch.__version__, torch.cuda.is_available(), transformers.__version__)"
  $PY -c "import pynvml as n; n.nvmlInit(); h=n.nvmlDeviceGetHandleByIndex(0); print('energy counter mJ', n.nvmlDeviceGetTotalEnergyConsumption(h))"
}

pack() {  # the device tool returns only plain names: a model list's commas become underscores
  (cd $REPORTS && tar czf "$OUT/reports-${1//[^A-Za-z0-9._-]/_}.tgz" --exclude=latest .) && ls -la "$OUT"
}

# issue 18: a fixed replica set, every model x CUDA configuration, 164 prompts, 3 runs (override with
# XD_MODELS, XD_CONFIGS, XD_PROMPTS, XD_RUNS); the shell times each session for the speed-up
XD_MODELS=${XD_MODELS:-tiny-starcoder,codeparrot-small,pythia-410m,bloom-560m}
XD_CONFIGS=${XD_CONFIGS:-torch-cuda,jit-cuda,compile-cuda}
XD_PROMPTS=${XD_PROMPTS:-164}; XD_RUNS=${XD_RUNS:-3}
xdist_session() {  # xdist_session N CAP_S [more pytest args]: -n N over the fixed set, wall time to $REPORTS/xdist-nN.wall
  local n=$1 cap=$2; shift 2
  local t0; t0=$(date +%s)
  session "xdist-n$n" "$cap" -n "$n" --greenserve-models="$XD_MODELS" --greenserve-configs="$XD_CONFIGS" \
    --greenserve-prompts="$XD_PROMPTS" --greenserve-runs="$XD_RUNS" --greenserve-idle=2 --greenserve-settle=1 \
    --greenserve-roofline=off "$@"
  echo $(( $(date +%s) - t0 )) > "$REPORTS/xdist-n$n.wall"
  nvidia-smi --query-gpu=index,name,uuid,power.draw --format=csv 2>/dev/null
}
xdist_compare() {
  local one two
  one=$(ls -d $REPORTS/xdist-n1/*/ 2>/dev/null | grep -v latest | head -1)
  two=$(ls -d $REPORTS/xdist-n2/*/ 2>/dev/null | grep -v latest | head -1)
  $PY tools/compare_xdist_runs.py "$one" "$two" --wall-s "$(cat $REPORTS/xdist-n1.wall)" "$(cat $REPORTS/xdist-n2.wall)"
}

if [ "${DRY:-0}" = 1 ]; then
  small="--greenserve-prompts=4 --greenserve-runs=3 --greenserve-idle=1"
  case "$1" in
    issue18-xdist) XD_MODELS=mini-gpt2,mini-pythia XD_CONFIGS=torch-cpu,onnx-cpu XD_PROMPTS=4 XD_RUNS=3 \
                   xdist_session "$2" 300; pack "issue18-xdist-n$2-dry" ;;
    issue18-compare) xdist_compare ;;
    issue3) session issue3-dry 200 --greenserve-models=mini-gpt2,mini-starcoder --greenserve-configs=torch-cpu,torch-cuda $small; pack issue3-dry ;;
    issue4) session issue4-dry 300 --greenserve-models=mini-gpt2,mini-pythia --greenserve-configs=torch-cpu,torch-cuda,onnx-cpu,openvino-cpu $small; pack issue4-dry ;;
  esac
  exit 0
fi

case "$1" in
  ort-part)  # ort-part aa: one 55 MB part of the onnxruntime-gpu wheel (carried as .ortparts/part-aa)
    mkdir -p /tmp/parts && cp ".ortparts/part-$2" /tmp/parts/ && ls -la /tmp/parts ;;
  install-ort)  # the last part carried with .ortparts/SHA256: join, check, install
    cp .ortparts/part-* /tmp/parts/ 2>/dev/null
    whl=/tmp/$(awk '{print $2}' .ortparts/SHA256)
    cat /tmp/parts/part-* > "$whl" && (cd /tmp && sha256sum -c "$OLDPWD/.ortparts/SHA256") || exit 4
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $SITE "$whl" || exit 3
    install .whl; probe
    $PY -c "import onnxruntime as o; o.preload_dlls(); print(o.__version__, o.get_available_providers())" ;;
  issue8-onnx)  # onnx-cuda beside torch-cuda: tie-aware match, node placement, ms/token
    [ -d $SITE/transformers ] || install .whl
    session issue8-onnx 420 --greenserve-models=codeparrot-small --greenserve-configs=torch-cuda,onnx-cuda \
      --greenserve-prompts=32 --greenserve-runs=3 --greenserve-idle=3
    pack issue8-onnx ;;
  issue8-cv)  # spread of GPU repetitions: torch-cuda and jit-cuda, 64 prompts, 5 repetitions (ARGS: the model)
    [ -d $SITE/transformers ] || install .whl
    session "issue8-cv-$2" 560 --greenserve-models="$2" --greenserve-configs=torch-cuda,jit-cuda \
      --greenserve-prompts=64 --greenserve-runs=5 --greenserve-idle=5
    pack "issue8-cv-$2" ;;
  issue11-http)  # torch-cuda in-process and over HTTP (carry .whl-serve: fastapi, uvicorn, httpx and their needs)
    [ -d $SITE/transformers ] || install .whl
    [ -d $SITE/opentelemetry ] || install .whl-serve
    shift; for transport in ${@:-inproc http}; do
      session "issue11-$transport" 280 --greenserve-models=codeparrot-small --greenserve-configs=torch-cuda \
        --greenserve-transport=$transport --greenserve-prompts=64 --greenserve-runs=3 --greenserve-idle=2
    done
    $PY -m pytest benchmarks/test_http_overhead.py -p pytest_greenserve.plugin -q -s -p no:cacheprovider 2>&1 \
      | grep -iE "ms|passed|failed|error" | tail -15
    pack issue11 ;;
  issue17-http)  # issue 17: the keep-alive overhead table (3 clients x null / real model x in-process / HTTP),
    # then the compile engine's prefill graphs under 1,000 random prompt lengths (GPU memory must stay flat)
    [ -d $SITE/transformers ] || install .whl
    [ -d $SITE/opentelemetry ] || install .whl-serve
    for real in mini-gpt2:torch-cpu codeparrot-small:torch-cuda codeparrot-small:compile-cuda; do
      GREENSERVE_OVERHEAD_REAL=$real timeout -s INT 280 $PY -m pytest benchmarks/test_http_overhead.py \
        -p pytest_greenserve.plugin -q -s -p no:cacheprovider --greenserve-weights=replica --greenserve-cache-dir=$CACHE \
        2>&1 | grep -E "^\||requests per path|passed|failed|rror" \
        | tee -a "$OUT/issue17-http.txt"
    done
    timeout -s INT 200 $PY - <<'PYEOF' 2>&1 | tee -a "$OUT/issue17-compile-graphs.txt"
import random, torch
from pathlib import Path
from pytest_greenserve.engines.base import EngineOptions
from pytest_greenserve.engines.compile import CompileEngine
from pytest_greenserve.models import resolve, spec_for
h = resolve(spec_for("codeparrot-small"), "replica", None, Path("/tmp/gscache"), 0)
e = CompileEngine(h, "cuda", EngineOptions(compile_mode="graph")); e.load()
rng = random.Random(0); mem = []
for i in range(1000):
    e.generate([rng.randrange(1, 30000) for _ in range(rng.randint(1, 900))], 8)
    if i % 100 == 99:
        torch.cuda.synchronize(); mem.append(torch.cuda.memory_reserved() // 2**20)
print("reserved MiB every 100 requests:", mem, "load_info:", e.load_info())
PYEOF
    ;;
  issue9-calibrate)  # the gate's A/A and planted-5% trials (a call cut at its limit: run it again, it resumes)
    [ -d $SITE/transformers ] || install .whl
    # PROMPTS RUNS IDLE NAME [CONFIG] [MODEL] [TRIALS]: 16 6 1 calib-gpu and 48 5 2 calib-gpu2 were
    # torch-cuda on codeparrot-small; 164 5 2 calib-gpu3 compile-cuda (PLANT=burn) the third and
    # 164 5 2 calib-gpu4 compile-cuda (repeat) the fourth
    prompts=${2:-16} runs=${3:-6} idle=${4:-1} out=/tmp/${5:-calib-gpu} config=${6:-torch-cuda}
    model=${7:-codeparrot-small} trials=${8:-10}
    timeout -s INT ${CAP_S:-540} $PY tools/calibrate_gate.py --model "$model" --config "$config" --trials "$trials" \
      --prompts "$prompts" --runs "$runs" --slowdown 0.05 --plant "${PLANT:-repeat}" --idle "$idle" --settle 0 --out "$out" --resume \
      --pytest-args="--greenserve-weights=replica --greenserve-cache-dir=$CACHE" 2>&1 | tail -40
    cp "$out"/calibration.json "$out"/sessions.json "$OUT"/ 2>/dev/null; ls -la "$OUT" ;;
  issue16-calibrate)  # the gate's sequential and interleaved designs, A/A and planted 5% (ARGS: config prompts runs cap_s)
    [ -d $SITE/transformers ] || install .whl
    config=${2:-torch-cuda} prompts=${3:-6} runs=${4:-55} cap=${5:-330}
    $PY tools/calibrate_ab.py --model codeparrot-small --config "$config" --runs "$runs" --cap-s "$cap" \
      --block 5 --prompts "$prompts" --out "/tmp/ab-$config" \
      --pytest-args="--greenserve-weights=replica --greenserve-cache-dir=$CACHE" 2>&1 | grep -vE "Warning|warnings.warn"
    tail -5 /tmp/ab-$config/session.log
    cp /tmp/ab-$config/samples.json "$OUT/ab-$config-samples.json" 2>/dev/null
    cp /tmp/ab-$config/calibration_ab.json "$OUT/ab-$config.json" 2>/dev/null; ls -la "$OUT" ;;
  issue17-sweep)  # torch-cuda and compile-cuda over HTTP, closed:1 and a Poisson sweep, J/token per rate (carry .whl-serve)
    [ -d $SITE/transformers ] || install .whl
    [ -d $SITE/fastapi ] || install .whl-serve
    model=${2:-codeparrot-small} configs=${3:-torch-cuda,compile-cuda}
    name="issue17-sweep-$model-${configs//,/-}"  # two sweeps (one per GPU) can run at once
    session "$name" 560 --greenserve-models="$model" --greenserve-configs="$configs" \
      --greenserve-transport=http --greenserve-load=sweep --greenserve-prompts="${4:-100}" --greenserve-runs="${5:-3}" \
      --greenserve-idle=2 --greenserve-settle=1
    $PY tools/load_curve.py "$REPORTS/$name/latest/samples.jsonl" | tee "$OUT/$name.txt"
    (cd $REPORTS && tar czf "$OUT/reports-$name.tgz" "$name") ;;
  issue10-probe)  # compile modes on one replica against torch, outside the meters (ARGS: provider model modes...)
    [ -d $SITE/transformers ] || install .whl
    $PY -c "import importlib.util as u, shutil; print('triton', u.find_spec('triton') is not None, 'cc', shutil.which('gcc'), shutil.which('g++'))"
    prov=$2 model=$3; shift 3
    timeout -s INT 540 $PY tools/compile_probe.py "$model" "$@" --provider "$prov" --cache $CACHE \
      --out "$OUT/probe-$prov-$model-${DTYPE:-fp32}.json" --dtype "${DTYPE:-fp32}" 2>&1 | grep -vE "Warning|warnings.warn" | tail -30 ;;
  issue19-variants)  # compile-cuda's inductor settings, each in a fresh process (ARGS: model [dtypes] [variants] [budget_s])
    [ -d $SITE/transformers ] || install .whl
    probe
    timeout -s INT 570 $PY tools/compile_variants.py "$2" --dtypes "${3:-bf16,fp32}" --variants "${4:-base,cdt,cdt-math,autotune}" \
      --budget-s "${5:-520}" --cache $CACHE --out "$OUT/variants-$2.json" 2>&1 | grep -vE "Warning|warnings.warn" | tail -30 ;;
  issue19-gemv)  # the fused step's GEMVs alone, every launch configuration (tools/gemv_bench.py), then the fused
    # step outside the meters (ARGS: [model] [dtype] [variants])
    [ -d $SITE/transformers ] || install .whl
    model=${2:-starcoderbase-1b} dtype=${3:-bf16}
    timeout -s INT 330 $PY tools/gemv_bench.py "$model" --dtype "$dtype" --out "$OUT/gemv-$model-$dtype.json" 2>&1 \
      | grep -vE "Warning|warnings.warn" | tail -60
    timeout -s INT 230 $PY tools/compile_variants.py "$model" --dtypes "$dtype" --variants "${4:-fused}" \
      --budget-s 200 --cache $CACHE --out "$OUT/variants-$model.json" 2>&1 | grep -vE "Warning|warnings.warn" | tail -20 ;;
  issue19-rows)  # the fused prefill's GEMMs alone, every launch configuration (tools/rows_bench.py)
    # (ARGS: [model] [dtype] [tokens]); then both prefills: issue19-variants MODEL DTYPE fused,fused-eagerprefill
    [ -d $SITE/transformers ] || install .whl
    model=${2:-starcoderbase-1b} dtype=${3:-bf16}
    timeout -s INT 540 $PY tools/rows_bench.py "$model" --dtype "$dtype" --tokens "${4:-12}" \
      --out "$OUT/rows-$model-$dtype.json" > "$OUT/rows-$model-$dtype.log" 2>&1; tail -45 "$OUT/rows-$model-$dtype.log" ;;
  issue19-ab)  # the fused step at this checkout, then at an earlier commit's package carried in .whl-base
    # (git archive COMMIT pytest_greenserve tools | tar -x -C .whl-base), its own tuning cache; ARGS: [model] [dtype]
    [ -d $SITE/transformers ] || install .whl
    [ -d .whl-base/pytest_greenserve ] || { echo "no .whl-base/pytest_greenserve: carry the earlier commit's package"; exit 2; }
    model=${2:-starcoderbase-1b} dtype=${3:-bf16}
    bash "$0" issue19-variants "$model" "$dtype" fused 200
    mkdir -p "$OUT/base"
    (cd .whl-base && OUT=$OUT/base GREENSERVE_CACHE=/tmp/gscache-base bash tools/device_run.sh issue19-variants "$model" "$dtype" fused 200) ;;
  issue19-mlp)  # starcoderbase-1b's GEMV chain with the MLP's two GEMVs as one kernel (tools/mlp_probe.py; no model needed)
    timeout -s KILL 200 $PY tools/mlp_probe.py --out "$OUT/mlp-probe.json" 2>&1 | grep -vE "Warning|warnings.warn" | tail -20 ;;
  issue19-persistent)  # starcoderbase-1b's GEMV chain as chained kernels against one persistent kernel
    # (tools/persistent_probe.py; no model needed)
    [ -d $SITE/transformers ] || install .whl
    timeout -s KILL 200 $PY tools/persistent_probe.py --out "$OUT/persistent-probe.json" 2>&1 \
      | grep -vE "Warning|warnings.warn" | tail -20 ;;
  issue8-threads)  # onnx-cpu vs torch-cpu on the 16 cores, each thread setting in a fresh process (ARGS: models)
    [ -d $SITE/transformers ] || install .whl
    shift; $PY -c "import onnxruntime as o; print('onnxruntime', o.__version__)"
    timeout -s INT 560 $PY tools/threads_probe.py ${@:-tiny-starcoder codeparrot-small} --cache $CACHE \
      --out "$OUT/threads.json" 2>&1 | grep -vE "Warning|warnings.warn" | tail -30 ;;
  issue8-ortprof)  # ONNX Runtime's per-operator profile on CPU; then: does profiling slow later CUDA requests?
    [ -d $SITE/transformers ] || install .whl
    for spin in on off; do
      $PY tools/profile_probe.py ort tiny-starcoder --spinning $spin --cache $CACHE --out "$OUT/ortprof-tiny-starcoder-$spin.json" 2>&1 | grep -E "^ |onnx-cpu"
    done
    $PY tools/profile_probe.py ort codeparrot-small --cache $CACHE --out "$OUT/ortprof-codeparrot-small-on.json" 2>&1 | grep -E "^ |onnx-cpu"
    $PY tools/profile_probe.py lingering codeparrot-small --cache $CACHE --out "$OUT/lingering.json" 2>&1 | grep -E "ms/token" ;;
  issue10)  # the measured session of issue 10 (ARGS: model configs [runs] [prompts] [cap_s] [name])
    [ -d $SITE/transformers ] || install .whl
    model=$2 configs=$3 runs=${4:-5} prompts=${5:-64} cap=${6:-560} name=${7:-issue10-$2}
    session "$name" "$cap" --greenserve-models="$model" --greenserve-configs="$configs" \
      --greenserve-prompts="$prompts" --greenserve-runs="$runs" --greenserve-idle=2 --greenserve-settle=1
    pack "$name" ;;
  issue19-engines)  # the engines deployed today (ARGS: model [configs] [runs] [prompts]). Carry .whl (transformers
    # 4.57: optimum-intel's export), .whl-engines (cp312, CPU builds: onnxruntime-genai 0.15.2, onnx-ir, onnx,
    # ml_dtypes, protobuf; openvino-genai 2026.4.1, optimum, optimum-intel, optimum-onnx; llama-cpp-python
    # 0.3.36 built here from its sdist (AVX-512 native build, libgomp beside it), sentencepiece, diskcache)
    # and .llama.cpp (the converter: convert_hf_to_gguf.py, conversion/, gguf-py/ from the same sdist).
    # openvino itself (.whl-ov, 58 MiB) does not fit beside them: install-ov first, on the same warm machine.
    # ortgenai-cuda and llamacpp-cuda need onnxruntime-genai-cuda and a -DGGML_CUDA=on build: not carried.
    [ -d $SITE/transformers ] || install .whl
    [ -d $SITE/onnxruntime_genai ] || install .whl-engines
    [ -d $SITE/openvino ] || echo "openvino is not in $SITE (a fresh machine): ovgenai will be skipped; run install-ov first"
    export GREENSERVE_LLAMA_CPP=$PWD/.llama.cpp
    for m in onnxruntime onnxruntime_genai openvino openvino_genai llama_cpp transformers; do
      $PY -c "import $m as x; print('$m', getattr(x, '__version__', '?'))" 2>&1 | tail -1
    done
    grep -qw avx512_bf16 /proc/cpuinfo || echo "no avx512_bf16 on this CPU: the carried llama-cpp-python build may fault"
    model=$2 configs=${3:-torch-cpu,ovgenai-cpu,llamacpp-cpu:f16,llamacpp-cpu:q8_0} runs=${4:-3} prompts=${5:-64}
    session "issue19-$model" 560 --greenserve-models="$model" --greenserve-configs="$configs" \
      --greenserve-prompts="$prompts" --greenserve-runs="$runs" --greenserve-idle=2 --greenserve-settle=1
    pack "issue19-$model" ;;
  issue19-onnx)  # onnx-cuda beside torch-cuda (ARGS: model [prompts] [runs]). After install-ort on the same warm
    # machine; carry .whl-engines (optimum-onnx, for the export)
    [ -d $SITE/transformers ] || install .whl
    [ -d $SITE/optimum ] || install .whl-engines
    name=issue19-onnx-$2
    session "$name" "${CAP:-300}" --greenserve-models="$2" --greenserve-configs=torch-cuda,onnx-cuda \
      --greenserve-prompts="${3:-16}" --greenserve-runs="${4:-1}" --greenserve-idle=2 --greenserve-settle=1
    pack "$name" ;;
  issue19-quality)  # bf16 judged by quality against fp32 (ARGS: [model] [prompts] [runs] [configs])
    [ -d $SITE/transformers ] || install .whl
    model=${2:-codeparrot-small}; name=issue19-bf16-$model
    session "$name" "${CAP:-560}" --greenserve-models="$model" --greenserve-configs="${5:-torch-cuda,compile-cuda}" \
      --greenserve-dtype=bf16 --greenserve-prompts="${3:-64}" --greenserve-runs="${4:-3}" --greenserve-idle=2 --greenserve-settle=1
    $PY - "$REPORTS/$name/latest/samples.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    s = json.loads(line)
    print(s["config"], s["repetition"], "ms/token", round(s["ms_per_token"], 3), "match", s["match_rate"],
          s["match_rate_tie_aware"], "excess", s["nll_excess_nats_per_token"], "torch", s["native_nll_excess_nats_per_token"],
          "low", s["nll_vs_native_low_nats_per_token"], "matched", s["quality_matched"])
PY
    pack "$name" ;;
  issue19-paper)  # the paper's five configurations on a replica, then greenserve paper (ARGS: [model] [prompts] [runs])
    [ -d $SITE/transformers ] || install .whl
    [ -d $SITE/optimum ] || { [ -d .whl-engines ] && install .whl-engines; }  # optimum-onnx, optimum-intel
    $PY -c "import onnxruntime as o; o.preload_dlls(); print('onnxruntime', o.__version__, o.get_available_providers())"
    model=${2:-codeparrot-small}; name=issue19-paper-$model
    session "$name" 560 --greenserve-models="$model" \
      --greenserve-configs=torch-cpu,torch-cuda,onnx-cpu,openvino-cpu,onnx-cuda \
      --greenserve-prompts="${3:-64}" --greenserve-runs="${4:-3}" --greenserve-idle=2 --greenserve-settle=1
    $PY -m pytest_greenserve paper "$REPORTS/$name/latest" | tee "$OUT/paper-$model.txt"
    pack "$name" ;;
  issue19-genai)  # ortgenai-cuda beside torch-cuda (ARGS: [model] [prompts] [runs] [dtype]). After install-ort on
    # the same warm machine; carry .whl-genai (onnxruntime-genai-cuda 0.15.2, the ortgenai-gpu extra's
    # pin, whose builder runs on the carried transformers 4.57; onnx, onnx-ir, ml_dtypes, protobuf).
    # fp32: the builder's CUDA model is invalid (docs/measurements.md); bf16 is its CUDA precision
    [ -d $SITE/transformers ] || install .whl
    # the CUDA build (issue19-paper's .whl-engines brings the CPU one under the same module name)
    ls -d $SITE/onnxruntime_genai_cuda-*.dist-info >/dev/null 2>&1 || install .whl-genai
    model=${2:-tinyllama} dtype=${5:-bf16}
    $PY -c "import onnxruntime_genai as g, onnxruntime as o, transformers as t; print('onnxruntime-genai', g.__version__, 'cuda', g.is_cuda_available(), 'onnxruntime', o.__version__, 'transformers', t.__version__)"
    session "issue19-genai-$model-$dtype" 540 --greenserve-models="$model" --greenserve-configs=torch-cuda,ortgenai-cuda \
      --greenserve-dtype="$dtype" --greenserve-prompts="${3:-32}" --greenserve-runs="${4:-3}" --greenserve-idle=2 --greenserve-settle=1
    pack "issue19-genai-$model-$dtype" ;;
  llamacpp-cuda-check)  # a CUDA llama-cpp-python (tools/build_llamacpp_cuda.sh) offloads, and gives the CPU's greedy
    # text: carry .whl-llamacuda (the wheel) and .whl-llamacuda-test (diskcache's wheel and a GGUF, ARGS: its name)
    $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/lc .whl-llamacuda/*.whl .whl-llamacuda-test/*.whl || exit 3
    LD_LIBRARY_PATH=$(cuda13_libs)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} PYTHONPATH=/tmp/lc \
      $PY tools/llamacpp_cuda_check.py ".whl-llamacuda-test/${2:-mini-gpt2-f16.gguf}" 2>&1 | grep -E "llama_cpp|CUDA0|n_gpu_layers|equal" ;;
  install-llamacuda)  # carry .whl-llamacuda and .whl-llamacuda-test: the CUDA llama-cpp-python and diskcache into
    # $SITE (with the converter and transformers beside them the call is over the 64 MiB a call carries)
    $PY -m pip install -q --no-index --no-deps --no-compile --upgrade --target $SITE .whl-llamacuda/*.whl \
      .whl-llamacuda-test/diskcache-*.whl || exit 3 ;;
  issue19-llamacuda)  # after install-llamacuda on the same warm machine; carry .whl and .llama.cpp: llamacpp-cuda
    # f16 and q8_0 beside torch-cuda and compile-cuda (ARGS: [model] [prompts] [runs])
    [ -d $SITE/transformers ] || install .whl
    ls -d $SITE/llama_cpp >/dev/null 2>&1 || { echo "llama_cpp is not in $SITE: run install-llamacuda first"; exit 3; }
    export LD_LIBRARY_PATH=$(cuda13_libs)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} GREENSERVE_LLAMA_CPP=$PWD/.llama.cpp
    $PY -c "import llama_cpp as l; print('llama_cpp', l.__version__, 'gpu offload', l.llama_supports_gpu_offload())"
    model=${2:-codeparrot-small}; name=issue19-llamacuda-$model
    session "$name" "${CAP:-540}" --greenserve-models="$model" \
      --greenserve-configs=torch-cuda,compile-cuda,llamacpp-cuda:f16,llamacpp-cuda:q8_0 \
      --greenserve-prompts="${3:-32}" --greenserve-runs="${4:-2}" --greenserve-idle=2 --greenserve-settle=1
    pack "$name" ;;
  install-ov)  # carry .whl-ov alone (openvino 2026.4.1, openvino-telemetry, openvino-tokenizers: 58.2 MiB)
    install .whl-ov; probe ;;
  issue3)
    install .whl; probe
    session issue3-codeparrot 260 --greenserve-models=codeparrot-small --greenserve-configs=torch-cpu,torch-cuda \
      --greenserve-prompts=64 --greenserve-runs=5 --greenserve-idle=5
    session issue3-starcoderbase 250 --greenserve-models=starcoderbase-1b --greenserve-configs=torch-cpu,torch-cuda \
      --greenserve-prompts=32 --greenserve-runs=5 --greenserve-idle=5
    pack issue3 ;;
  issue3-starcoderbase)  # the second replica again, alone, for 5 repetitions of both configurations
    install .whl
    session issue3-starcoderbase-5 420 --greenserve-models=starcoderbase-1b --greenserve-configs=torch-cpu,torch-cuda \
      --greenserve-prompts=32 --greenserve-runs=5 --greenserve-idle=5
    pack issue3-starcoderbase ;;
  cuda-engines)  # every engine on cuda that can run there (onnx-cuda needs onnxruntime-gpu: it says so)
    install .whl
    session cuda-engines 200 --greenserve-models=mini-gpt2,mini-starcoder,mini-pythia \
      --greenserve-configs=torch-cuda,jit-cuda,onnx-cuda --greenserve-prompts=16 --greenserve-runs=3 --greenserve-idle=2
    pack cuda-engines ;;
  issue18-xdist)  # -n 1 or -n 2 over the fixed replica set (ARGS: workers [cap_s])
    [ -d $SITE/transformers ] || install .whl
    [ -d .whl-xdist ] && { [ -d $SITE/xdist ] || install .whl-xdist; }  # the image has pytest-xdist; carry it where not
    probe
    xdist_session "$2" "${3:-570}"
    pack "issue18-xdist-n$2" ;;
  issue18-compare)  # after both issue18-xdist calls, on the same machine (still warm)
    xdist_compare | tee "$OUT/issue18-compare.txt" ;;
  issue18-study)  # the whole study: every paper model's replica, every configuration, -n N (ARGS: workers [cap_s])
    [ -d $SITE/transformers ] || install .whl
    [ -d .whl-xdist ] && { [ -d $SITE/xdist ] || install .whl-xdist; }  # the image has pytest-xdist; carry it where not
    t0=$(date +%s)
    session "study-n$2" "${3:-570}" -n "$2" --greenserve-models=paper
    echo "study -n $2: $(( $(date +%s) - t0 )) s wall" | tee "$OUT/issue18-study.txt"
    pack "issue18-study-n$2" ;;
  issue18-probe)  # every paper replica x torch-cuda, compile-cuda once on 8 prompts, -n 2, for tools/project_study.py
    [ -d $SITE/transformers ] || install .whl
    session study-probe "${2:-470}" -n 2 --greenserve-models=paper --greenserve-configs=torch-cuda,compile-cuda \
      --greenserve-prompts=8 --greenserve-runs=1 --greenserve-idle=2 --greenserve-settle=1
    $PY tools/project_study.py $REPORTS/study-probe/latest/samples.jsonl --prompts 164 --runs 3 --workers 2 \
      | tee "$OUT/issue18-projection.txt"
    pack study-probe ;;
  issue4)
    [ -d $SITE/transformers ] || install .whl
    session issue4 520 --greenserve-models=codeparrot-small,tiny-starcoder \
      --greenserve-configs=torch-cpu,torch-cuda,onnx-cpu,openvino-cpu --greenserve-prompts=32 --greenserve-runs=3 --greenserve-idle=3
    pack issue4 ;;
esac
