#!/usr/bin/env bash
# A CUDA build of llama-cpp-python on a machine without a CUDA toolkit or GPU (how the wheel for
# the lent H200 was made): the toolkit is put together from NVIDIA's pip wheels, and the driver
# library, which no wheel ships, is a link-time stand-in (the real libcuda.so.1 comes from the
# driver at run time). sm_90 (Hopper) only by default. On the 2-core VM: 45 min of CPU time (27 min
# of wall time for the same build alone); the wheel is 251 MiB, as pip stores each library three
# times (the one carried to the H200 kept one copy of each: 44.8 MiB).
#
#   tools/build_llamacpp_cuda.sh [OUT_DIR]        # the wheel goes to OUT_DIR (default ./dist-llamacpp-cuda)
#   CUDA_ARCHS=80;90 tools/build_llamacpp_cuda.sh  # other GPUs (a longer build)
#
# Run the result with the CUDA 13 runtime and cuBLAS on the library path (torch's cu130 wheels
# bring them): LD_LIBRARY_PATH=<site-packages>/nvidia/cu13/lib; check it with
# tools/llamacpp_cuda_check.py. With a CUDA toolkit installed, tools/install_llamacpp.sh with
# CMAKE_ARGS=-DGGML_CUDA=on does the same in one step.
set -euo pipefail
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
OUT="$(realpath -m "${1:-dist-llamacpp-cuda}")"
ARCHS="${CUDA_ARCHS:-90}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
CUDA="$WORK/cuda"

# 1. the toolkit, CUDA 13.0, from pip wheels
python -m pip download -q --no-deps --only-binary=:all: -d "$WORK/whl" \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_28_x86_64 --python-version 3.11 \
  nvidia-cuda-nvcc==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cuda-crt==13.0.88 \
  nvidia-nvvm==13.0.88 nvidia-cublas==13.0.2.14
for w in "$WORK"/whl/*.whl; do unzip -q -o "$w" -d "$WORK/stage"; done
mkdir -p "$CUDA" && cp -a "$WORK"/stage/nvidia/cu13/. "$CUDA/" && ln -s lib "$CUDA/lib64"
mkdir -p "$CUDA/targets/x86_64-linux"
ln -s ../../include "$CUDA/targets/x86_64-linux/include" && ln -s ../../lib "$CUDA/targets/x86_64-linux/lib"
(cd "$CUDA/lib" && ln -s libcudart.so.13 libcudart.so && ln -s libcublas.so.13 libcublas.so \
  && ln -s libcublasLt.so.13 libcublasLt.so && ln -s libnvvm.so.4 libnvvm.so)

# 2. libcuda.so for linking only: one stand-in per driver entry point cuda.h declares
mkdir -p "$CUDA/lib/stubs"
echo '#include <cuda.h>' | gcc -E -P -I"$CUDA/include" - \
  | grep -oE '^\s*(extern\s+)?CUresult\s+cu[A-Za-z0-9_]+\s*\(' | grep -oE 'cu[A-Za-z0-9_]+' | sort -u \
  | while read -r name; do echo "int $name(void) { return 999; }"; done > "$WORK/stub.c"
gcc -shared -fPIC -o "$CUDA/lib/stubs/libcuda.so" -Wl,-soname,libcuda.so.1 "$WORK/stub.c"

# 3. the wheel, from the sdist
python -m pip download -q --no-deps --no-binary :all: -d "$WORK" "llama-cpp-python==$VERSION"
export CUDACXX="$CUDA/bin/nvcc" CUDAToolkit_ROOT="$CUDA" CUDA_PATH="$CUDA"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
export CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=$ARCHS -DCMAKE_CUDA_COMPILER=$CUDA/bin/nvcc \
-DCUDAToolkit_ROOT=$CUDA -DGGML_NATIVE=off -DGGML_AVX=on -DGGML_AVX2=on -DGGML_FMA=on -DGGML_F16C=on \
-DGGML_BMI2=on -DGGML_AVX512=on -DGGML_AVX512_VNNI=on -DGGML_CUDA_NCCL=off -DGGML_CUDA_FA_ALL_QUANTS=off -DLLAVA_BUILD=OFF"
time python -m pip wheel --no-deps -w "$OUT" "$WORK"/llama_cpp_python-*.tar.gz
echo "the wheel is in $OUT; run it with LD_LIBRARY_PATH=<site-packages>/nvidia/cu13/lib (CUDA 13 runtime, cuBLAS)"
