#!/usr/bin/env bash
# One command from a fresh clone to a working environment: a venv in .venv with every
# dependency pinned, llama-cpp-python built from source with flags that are safe on CPUs
# whose native build crashes (AVX-512/AMX machines segfault in decode).
#
#   scripts/install.sh            CPU build (default)
#   RBEE_LLAMA_CMAKE_ARGS="-DGGML_CUDA=on" scripts/install.sh   CUDA build
#
# pip's wheel cache ignores CMAKE_ARGS, so the wheel is built with --no-cache-dir into a
# wheelhouse whose name encodes the flags; a later install with the same flags reuses it.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
LLAMA_VERSION=0.3.36
CMAKE_FLAGS=${RBEE_LLAMA_CMAKE_ARGS:-"-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"}
flags_id=$(printf '%s' "$CMAKE_FLAGS" | sha256sum | cut -c1-12)
WHEELHOUSE=${RBEE_WHEELHOUSE:-"$HOME/.cache/rbee/wheelhouse"}/llama-cpp-python-$LLAMA_VERSION-$flags_id

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip wheel

if ! ls "$WHEELHOUSE"/llama_cpp_python-*.whl >/dev/null 2>&1; then
  echo "building llama-cpp-python $LLAMA_VERSION with CMAKE_ARGS=\"$CMAKE_FLAGS\" (a few minutes)"
  mkdir -p "$WHEELHOUSE"
  CMAKE_ARGS="$CMAKE_FLAGS" .venv/bin/python -m pip wheel --no-deps --no-cache-dir \
    --wheel-dir "$WHEELHOUSE" "llama-cpp-python==$LLAMA_VERSION"
fi
.venv/bin/python -m pip install --quiet --force-reinstall --no-deps "$WHEELHOUSE"/llama_cpp_python-*.whl
.venv/bin/python -m pip install --quiet -r requirements.lock
.venv/bin/python -m pip install --quiet --no-deps -e .
echo "installed: $(.venv/bin/python -c 'import llama_cpp; print("llama-cpp-python", llama_cpp.__version__)')"
