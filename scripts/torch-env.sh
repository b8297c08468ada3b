#!/usr/bin/env bash
# Source this file: it makes sure PyTorch 2.11.0 (the libtorch that tch 0.24 is built against)
# is importable, then exports what the build and the trainer need to find it.
#   LIBTORCH_USE_PYTORCH=1  torch-sys builds against the Python package's libtorch
#   LD_LIBRARY_PATH         the trainer binary finds libtorch*.so at run time
#   MPL_PYTHON              the interpreter that has torch (used by export tests)

_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_want="2.11.0"
_has_torch() { "$1" -c "import torch,sys; sys.exit(0 if torch.__version__.split('+')[0]=='$_want' else 1)" 2>/dev/null; }

if _has_torch python3; then
  MPL_PYTHON="$(command -v python3)"
elif [ -x "$_root/.venv/bin/python" ] && _has_torch "$_root/.venv/bin/python"; then
  MPL_PYTHON="$_root/.venv/bin/python"
else
  echo "==> installing PyTorch $_want into $_root/.venv (a large download, once)" >&2
  python3 -m venv "$_root/.venv"
  "$_root/.venv/bin/python" -m pip install --progress-bar off "torch==$_want" numpy >&2
  MPL_PYTHON="$_root/.venv/bin/python"
fi
# Loading exports (python/mpl_reference.py) needs safetensors, and torchvision for ResNet and
# EfficientNet; torchvision 0.26.0 is the release built against torch 2.11.0.
if ! "$MPL_PYTHON" -c 'import safetensors, torchvision' 2>/dev/null; then
  echo "==> installing safetensors and torchvision 0.26.0 for $MPL_PYTHON (once)" >&2
  "$MPL_PYTHON" -m pip install --progress-bar off safetensors "torchvision==0.26.0" >&2 || true
fi
_torch_dir="$("$MPL_PYTHON" -c 'import torch,os; print(os.path.dirname(torch.__file__))' 2>/dev/null)"
export MPL_PYTHON
export LIBTORCH_USE_PYTORCH=1
export LIBTORCH_BYPASS_VERSION_CHECK=0
export LD_LIBRARY_PATH="$_torch_dir/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PATH="$(dirname "$MPL_PYTHON"):$PATH"
unset _root _want _torch_dir
