#!/usr/bin/env bash
# Builds llama.cpp's own `llama-server` from the very llama.cpp that llama-cpp-python
# vendors (the version scripts/install.sh pins), with the same CPU flags, so that
# benchmarks/worker_efficiency.py compares the worker with llama-server on one engine
# build rather than two llama.cpp versions. Only the llama-server target is built.
#
#   benchmarks/build_llama_server.sh      prints the binary's path when done
#
# worker_efficiency.py finds the binary in the same cache folder (or via LLAMA_SERVER).
set -euo pipefail
cd "$(dirname "$0")/.."

LLAMA_VERSION=$(sed -n 's/^LLAMA_VERSION=//p' scripts/install.sh)
CMAKE_FLAGS=${RBEE_LLAMA_CMAKE_ARGS:-"-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"}
flags_id=$(printf '%s' "$CMAKE_FLAGS" | sha256sum | cut -c1-12)
DEST=${RBEE_LLAMA_SERVER_DIR:-"$HOME/.cache/rbee/llama-server-$LLAMA_VERSION-$flags_id"}

if [ -x "$DEST/llama-server" ]; then
  echo "$DEST/llama-server"
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
.venv/bin/python -m pip download --quiet --no-deps --no-binary :all: --no-cache-dir \
  -d "$work" "llama-cpp-python==$LLAMA_VERSION"
tar -xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
src=$(echo "$work"/llama_cpp_python-*/vendor/llama.cpp)
# shellcheck disable=SC2086  # the flags are a list of words
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF $CMAKE_FLAGS >"$work/cmake.log"
cmake --build "$work/build" --target llama-server -j "$(nproc)" >"$work/build.log" \
  || { tail -40 "$work/build.log"; exit 1; }
mkdir -p "$DEST"
cp "$work/build/bin/llama-server" "$DEST/"
echo "$DEST/llama-server"
