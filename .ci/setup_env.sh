#!/usr/bin/env bash
# Idempotent set-up of the project-local environment (.venv).
#   system packages (OpenMPI, PMIx, Slurm, munge)  -> apt, skipped when present
#   torch + torchvision pair, DALI, h5py, ...      -> pip into .venv
#   Horovod 0.28.1 built against that torch        -> wheel kept in a wheelhouse outside the clone
# Every step checks whether its result is already there and does nothing if so.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
PY=${PYTHON:-python3}
VENV=${VENV:-$here/.venv}
TORCH_VERSION=${TORCH_VERSION:-2.14.1}
TORCHVISION_VERSION=${TORCHVISION_VERSION:-0.29.1}
HOROVOD_VERSION=${HOROVOD_VERSION:-0.28.1}
WHEELHOUSE=${COVIDNETX_WHEELHOUSE:-${XDG_CACHE_HOME:-$HOME/.cache}/covidnetx/wheels}

log() { printf '[setup] %s\n' "$*"; }

# ---- 1. system packages -------------------------------------------------------------------------
SYS_PKGS="openmpi-bin libopenmpi-dev libpmix-dev slurmctld slurmd slurm-client munge"
missing=""
for p in $SYS_PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null; then
    echo "[setup] missing system packages:$missing (run as root or install them)" >&2; exit 1
  fi
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  log "apt-get install$missing"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
else
  log "system packages present"
fi

# ---- 2. virtual environment and Python packages --------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
pip_q() {  # quiet pip; drop the machine-specific "Location ... is ignored" noise, keep real errors
  "$VPY" -m pip --disable-pip-version-check -q "$@" 2> >(grep -v "^WARNING: Location" >&2)
}
PIP=pip_q

req_stamp="$VENV/.covidnetx-req"
req_hash=$(cat .ci/requirements.txt | sha256sum | cut -c1-16)-$TORCH_VERSION
if [ "$(cat "$req_stamp" 2>/dev/null)" != "$req_hash" ]; then
  log "pip install torch==$TORCH_VERSION torchvision==$TORCHVISION_VERSION and .ci/requirements.txt"
  $PIP install wheel packaging setuptools
  $PIP install "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
  $PIP install -r .ci/requirements.txt
  echo "$req_hash" > "$req_stamp"
else
  log "python packages present"
fi

# ---- 3. Horovod built against this torch (MPI + Gloo controllers) --------------------------------
if "$VPY" -c "import horovod.torch" 2>/dev/null; then
  log "horovod present: $("$VPY" -c 'import horovod; print(horovod.__version__)')"
else
  torch_tag=$("$VPY" -c 'import torch; print(torch.__version__.replace("+", "_"))')
  wh="$WHEELHOUSE/torch-$torch_tag"
  mkdir -p "$wh"
  whl=$(ls "$wh"/horovod-"$HOROVOD_VERSION"-*.whl 2>/dev/null | head -n1 || true)
  if [ -z "$whl" ]; then
    log "building horovod $HOROVOD_VERSION against torch $torch_tag (a few minutes, once per machine)"
    bash .ci/build_horovod.sh "$VPY" "$HOROVOD_VERSION" "$wh"
    whl=$(ls "$wh"/horovod-"$HOROVOD_VERSION"-*.whl | head -n1)
  else
    log "reusing $whl"
  fi
  $PIP install --no-deps "$whl"
  # horovod's own runtime dependencies
  $PIP install cloudpickle psutil pyyaml packaging cffi
fi

# ---- 4. the project itself (editable) ------------------------------------------------------------
if ! "$VPY" -c "import covidnetx, data_tools" 2>/dev/null || [ ! -x "$VENV/bin/covidnetx" ]; then
  log "pip install -e ."
  $PIP install --no-deps --no-build-isolation -e .
fi
log "ready: $VENV"
