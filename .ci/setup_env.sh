#!/usr/bin/env bash
# Idempotent set-up of the project-local environment (.venv).
#   MPI (the one on PATH, e.g. a site module; else OpenMPI from apt); Slurm + munge for the local test
#   cluster only (COVIDNETX_TEST_CLUSTER=1)          -> apt where missing and possible, else one message
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

# ---- 1. system pieces ----------------------------------------------------------------------------
# MPI: the one already on PATH (a site module on a cluster: `module load OpenMPI`), else OpenMPI from apt.
# Slurm + munge: only for the local test cluster of `make test` (COVIDNETX_TEST_CLUSTER=1, which the
# Makefile's test target sets); a real cluster brings its own. Nothing here needs root unless a Debian
# package is missing; without dpkg/apt (RHEL, Rocky, SUSE) or without root, the set-up uses what the
# environment provides or stops with one message naming what is missing and how to get it.
have() { command -v "$1" >/dev/null 2>&1; }
deb_missing() { for p in "$@"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || printf ' %s' "$p"; done; }
cmd_missing() { for c in "$@"; do have "$c" || printf ' %s' "$c"; done; }
missing=""; problems=""
if have mpicc && have mpirun; then
  log "MPI: $(command -v mpirun) ($(mpirun --version 2>/dev/null | head -n1))"
elif have dpkg-query; then
  missing="$missing openmpi-bin libopenmpi-dev libpmix-dev"
else
  problems="${problems}  MPI: mpicc and mpirun are not on PATH. On a cluster, load the site's MPI module first (JUWELS: module load GCC OpenMPI; see docs/cluster.md); elsewhere install OpenMPI with its headers (RHEL/Rocky: dnf install openmpi openmpi-devel, then module load mpi/openmpi-x86_64).
"
fi
if [ "${COVIDNETX_TEST_CLUSTER:-0}" = 1 ] && [ "$(id -u)" -ne 0 ]; then
  log "the local Slurm test cluster runs its daemons as root: its tests will skip (not root here)"
elif [ "${COVIDNETX_TEST_CLUSTER:-0}" = 1 ]; then
  if have dpkg-query; then
    missing="$missing$(deb_missing libpmix-dev slurmctld slurmd slurm-client munge)"
  else
    m=$(cmd_missing slurmctld slurmd sbatch srun munged)
    [ -z "$m" ] || problems="${problems}  the local test cluster of make test:$m not found. Install Slurm and munge (RHEL/Rocky: dnf install slurm-slurmctld slurm-slurmd munge), or leave the Slurm tests out: make test COVIDNETX_TEST_CLUSTER=0 (they skip, saying why).
"
  fi
fi
missing=$(printf '%s\n' $missing | sort -u | tr '\n' ' ' | sed 's/^ *//; s/ *$//')
if [ -n "$missing" ]; then
  if [ "$(id -u)" -ne 0 ] && ! have sudo; then
    problems="${problems}  Debian packages: $missing (install them as root: apt-get install $missing; or, for MPI, put a site MPI's mpicc and mpirun on PATH).
"
  else
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
    log "apt-get install $missing"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
  fi
elif [ -z "$problems" ]; then
  log "system pieces present"
fi
if [ -n "$problems" ]; then
  printf '[setup] error: missing what the set-up cannot install here:\n%s' "$problems" >&2
  exit 1
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
# TORCH_INDEX_URL picks the torch wheels' CUDA variant to match the site's driver, e.g.
# https://download.pytorch.org/whl/cu126 (or .../whl/cpu); unset: PyPI's default wheel
TORCH_INDEX_URL=${TORCH_INDEX_URL:-}
req_hash=$(cat .ci/requirements.txt | sha256sum | cut -c1-16)-$TORCH_VERSION${TORCH_INDEX_URL:+-$TORCH_INDEX_URL}
if [ "$(cat "$req_stamp" 2>/dev/null)" != "$req_hash" ]; then
  log "pip install torch==$TORCH_VERSION torchvision==$TORCHVISION_VERSION${TORCH_INDEX_URL:+ from $TORCH_INDEX_URL} and .ci/requirements.txt"
  $PIP install wheel packaging setuptools
  $PIP install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
  $PIP install -r .ci/requirements.txt
  echo "$req_hash" > "$req_stamp"
else
  log "python packages present"
fi

# ---- 3. Horovod built against this torch ---------------------------------------------------------
# COVIDNETX_GPU=auto (default): on a machine with a GPU (nvidia-smi lists one) and a CUDA toolkit (nvcc on
# PATH, e.g. after `module load CUDA`), try a build with NCCL tensor operations (HOROVOD_NCCL_HOME from
# NCCL_HOME where set) and fall back to the CPU build (MPI + Gloo) with a warning if it fails; elsewhere
# the CPU build. COVIDNETX_GPU=1: the NCCL build or an error (a login node without GPUs builds for the
# compute nodes' GPUs this way); COVIDNETX_GPU=0: the CPU build.
GPU=${COVIDNETX_GPU:-auto}
case "$GPU" in auto|0|1) ;; *) echo "[setup] error: COVIDNETX_GPU=$GPU: use auto, 0 or 1" >&2; exit 1;; esac
if [ "$GPU" = 1 ] && ! have nvcc; then
  echo "[setup] error: COVIDNETX_GPU=1 needs a CUDA toolkit: nvcc is not on PATH (on a cluster: module load CUDA)" >&2
  exit 1
fi
hvd_ok() {     # an installed Horovod that fits what was asked (auto: whichever build is there)
  if [ "$GPU" = 1 ]; then "$VPY" -c "import horovod.torch as h, sys; sys.exit(0 if h.nccl_built() else 1)" 2>/dev/null
  else "$VPY" -c "import horovod.torch" 2>/dev/null; fi
}
hvd_wheel() {  # $1 = nccl|cpu: the wheel from the wheelhouse, built there first if missing
  local wh="$WHEELHOUSE/torch-$torch_tag" whl
  if [ "$1" = nccl ]; then wh="$wh-nccl"; fi
  mkdir -p "$wh"
  whl=$(ls "$wh"/horovod-"$HOROVOD_VERSION"-*.whl 2>/dev/null | head -n1 || true)
  if [ -z "$whl" ]; then
    log "building horovod $HOROVOD_VERSION against torch $torch_tag ($1; a few minutes, once per machine)"
    if [ "$1" = nccl ]; then
      (export HOROVOD_GPU_OPERATIONS=NCCL; [ -z "${NCCL_HOME:-}" ] || export HOROVOD_NCCL_HOME="$NCCL_HOME"
       bash .ci/build_horovod.sh "$VPY" "$HOROVOD_VERSION" "$wh" >"$wh/build.log" 2>&1) || {
        log "the NCCL build failed (log: $wh/build.log)"; return 1; }
    else
      (unset HOROVOD_GPU_OPERATIONS HOROVOD_GPU_ALLREDUCE HOROVOD_GPU_BROADCAST
       bash .ci/build_horovod.sh "$VPY" "$HOROVOD_VERSION" "$wh")
    fi
    whl=$(ls "$wh"/horovod-"$HOROVOD_VERSION"-*.whl | head -n1)
  else
    log "reusing $whl"
  fi
  WHL=$whl
}
if hvd_ok; then
  log "horovod present: $("$VPY" -c 'import horovod.torch as h, horovod; print(horovod.__version__, "(MPI:", h.mpi_built(), "Gloo:", h.gloo_built(), "NCCL:", bool(h.nccl_built()), ")")')"
else
  torch_tag=$("$VPY" -c 'import torch; print(torch.__version__.replace("+", "_"))')
  WHL=""
  if [ "$GPU" = 1 ]; then
    hvd_wheel nccl || { echo "[setup] error: COVIDNETX_GPU=1: Horovod's NCCL build failed; its log names what is missing (CUDA runtime, NCCL: module load CUDA NCCL, or NCCL_HOME)" >&2; exit 1; }
  elif [ "$GPU" = auto ] && have nvcc && nvidia-smi -L 2>/dev/null | grep -q "^GPU"; then
    hvd_wheel nccl || log "warning: building the CPU Horovod instead (GPU training then allreduces over MPI; COVIDNETX_GPU=1 makes this an error)"
  fi
  [ -n "$WHL" ] || hvd_wheel cpu
  $PIP install --no-deps --force-reinstall "$WHL"
  # horovod's own runtime dependencies
  $PIP install cloudpickle psutil pyyaml packaging cffi
  log "horovod's build check (horovodrun --check-build):"
  "$VENV/bin/horovodrun" --check-build | sed -n '/Available/,$p' | sed 's/^/[setup]   /'
fi

# ---- 4. the project itself (editable) ------------------------------------------------------------
if ! "$VPY" -c "import covidnetx, data_tools" 2>/dev/null || [ ! -x "$VENV/bin/covidnetx" ]; then
  log "pip install -e ."
  $PIP install --no-deps --no-build-isolation -e .
fi
log "ready: $VENV"
