#!/usr/bin/env bash
# The GPU measurements of issues 3 and 4, as run on the lent GPU machine (see tools/README.md).
#   bash tools/device_run.sh install-ov   # first call: carries .whl-ov (openvino wheel alone)
#   bash tools/device_run.sh issue3       # carries .whl: torch-cpu vs torch-cuda on two replicas
#   bash tools/device_run.sh issue4       # torch-cpu, torch-cuda, onnx-cpu, openvino-cpu on two replicas
#   bash tools/device_run.sh ort-part aa  # issue 8: each 55 MB part of onnxruntime-gpu in a call of its own,
#   bash tools/device_run.sh install-ort  #   then join, check and install (carry .ortparts/SHA256 and the last part)
#   bash tools/device_run.sh issue8-onnx  # onnx-cuda beside torch-cuda on codeparrot-small
#   bash tools/device_run.sh issue8-cv codeparrot-small   # torch-cuda and jit-cuda, 64 prompts x 5
#   bash tools/device_run.sh issue11-http # torch-cuda in-process vs over HTTP; the null engine's HTTP overhead
#   bash tools/device_run.sh issue10-probe cuda codeparrot-small graph inductor+graph  # compile modes vs torch
#   bash tools/device_run.sh issue8-threads  # onnx-cpu vs torch-cpu thread settings, fresh process each
#   bash tools/device_run.sh issue8-ortprof  # ONNX Runtime's operator profile; profiler after-effects
#   bash tools/device_run.sh issue10 codeparrot-small torch-cuda,jit-cuda,onnx-cuda,compile-cuda  # 64 prompts x 5
#   bash tools/device_run.sh issue9-calibrate 164 5 2 calib-gpu4 compile-cuda  # the gate's trials; again until all sessions ran
#   bash tools/device_run.sh issue19-quality codeparrot-small 64 3   # bf16 torch-cuda and compile-cuda, judged by quality
#   bash tools/device_run.sh issue19-paper codeparrot-small 64 3     # the paper's five configurations, then greenserve paper
# DRY=1 runs a tiny CPU-only version of the same sessions locally to check the script.
# Each session is capped with SIGINT (pytest then finishes cleanly); finished samples are
# never lost. Results: one tarball of the report directories under $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/greenserve-out}; mkdir -p "$OUT"
SITE=/tmp/site; CACHE=${GREENSERVE_CACHE:-/tmp/gscache}; REPORTS=/tmp/greports
PY=${PY:-python3}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

install() {  # wheels carried in folder $1 go to /tmp/site, which outlives calls while the machine is warm
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $SITE "$1"/*.whl || exit 3
}
export PYTHONPATH=$SITE:$PWD

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

pack() {
  (cd $REPORTS && tar czf "$OUT/reports-$1.tgz" --exclude=latest .) && ls -la "$OUT"
}

if [ "${DRY:-0}" = 1 ]; then
  small="--greenserve-prompts=4 --greenserve-runs=3 --greenserve-idle=1"
  case "$1" in
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
  issue10-probe)  # compile modes on one replica against torch, outside the meters (ARGS: provider model modes...)
    [ -d $SITE/transformers ] || install .whl
    $PY -c "import importlib.util as u, shutil; print('triton', u.find_spec('triton') is not None, 'cc', shutil.which('gcc'), shutil.which('g++'))"
    prov=$2 model=$3; shift 3
    timeout -s INT 540 $PY tools/compile_probe.py "$model" "$@" --provider "$prov" --cache $CACHE \
      --out "$OUT/probe-$prov-$model-${DTYPE:-fp32}.json" --dtype "${DTYPE:-fp32}" 2>&1 | grep -vE "Warning|warnings.warn" | tail -30 ;;
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
  issue19-quality)  # bf16 judged by quality against fp32 (ARGS: [model] [prompts] [runs] [configs])
    [ -d $SITE/transformers ] || install .whl
    model=${2:-codeparrot-small}; name=issue19-bf16-$model
    session "$name" 560 --greenserve-models="$model" --greenserve-configs="${5:-torch-cuda,compile-cuda}" \
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
    model=${2:-codeparrot-small}; name=issue19-paper-$model
    session "$name" 560 --greenserve-models="$model" \
      --greenserve-configs=torch-cpu,torch-cuda,onnx-cpu,openvino-cpu,onnx-cuda \
      --greenserve-prompts="${3:-64}" --greenserve-runs="${4:-3}" --greenserve-idle=2 --greenserve-settle=1
    $PY -m pytest_greenserve paper "$REPORTS/$name/latest" | tee "$OUT/paper-$model.txt"
    pack "$name" ;;
  install-ov)
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
  issue4)
    [ -d $SITE/transformers ] || install .whl
    session issue4 520 --greenserve-models=codeparrot-small,tiny-starcoder \
      --greenserve-configs=torch-cpu,torch-cuda,onnx-cpu,openvino-cpu --greenserve-prompts=32 --greenserve-runs=3 --greenserve-idle=3
    pack issue4 ;;
esac
