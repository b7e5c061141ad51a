#!/usr/bin/env bash
# Build llama-cpp-python from its sdist (the package index has no wheel) and keep llama.cpp's
# GGUF converter (convert_hf_to_gguf.py, conversion/, gguf-py/) from the same sdist where the
# llamacpp engine looks for it: <cache dir>/llama.cpp (GREENSERVE_CACHE, else
# ~/.cache/pytest-greenserve), or the directory given as $1.
#
#   tools/install_llamacpp.sh                 # CPU build
#   CMAKE_ARGS=-DGGML_CUDA=on tools/install_llamacpp.sh   # with CUDA offload
#
# On the 2-core VM the default build took 33 min of wall time under load from other jobs (9.4 min
# of CPU time). LLAVA_BUILD=OFF (llama-cpp-python's CMake option) skips the multimodal library,
# which the engine does not use (that build was not timed).
set -euo pipefail
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
CACHE="${GREENSERVE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pytest-greenserve}"
DEST="${1:-$CACHE/llama.cpp}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

python -m pip download --no-deps --no-binary :all: -d "$WORK" "llama-cpp-python==$VERSION"
SDIST="$(ls "$WORK"/llama_cpp_python-*.tar.gz)"
export CMAKE_ARGS="${CMAKE_ARGS:-} -DLLAVA_BUILD=OFF"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
time python -m pip install "$SDIST" "sentencepiece>=0.1.98"   # sentencepiece: the converter's llama vocabularies

tar xzf "$SDIST" -C "$WORK"
SRC="$(ls -d "$WORK"/llama_cpp_python-*/vendor/llama.cpp)"
mkdir -p "$DEST"
cp -r "$SRC/convert_hf_to_gguf.py" "$SRC/conversion" "$SRC/gguf-py" "$DEST/"
echo "llama.cpp's converter is in $DEST (the llamacpp engine finds it there, or set GREENSERVE_LLAMA_CPP)"
