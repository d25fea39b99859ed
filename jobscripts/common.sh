# Sourced by every covidnetx job script: environment, Horovod/NCCL settings, and `covidnetx_run`, which
# runs a job step, forwards Slurm's early-warning signal to it, and requeues the job when the step saved
# a checkpoint and exited 75 (EX_TEMPFAIL) because of that signal.

# Site modules (JUWELS Booster example: "Stages/2024 GCC OpenMPI CUDA NCCL"), space-separated.
if [ -n "${COVIDNETX_MODULES:-}" ] && command -v module >/dev/null 2>&1; then
  module purge
  module load ${COVIDNETX_MODULES}
fi
# A virtual environment to activate, if any (the python named in the job script is used either way).
if [ -n "${COVIDNETX_VENV:-}" ] && [ -f "${COVIDNETX_VENV}/bin/activate" ]; then
  . "${COVIDNETX_VENV}/bin/activate"
fi

# Horovod / NCCL over InfiniBand (JUWELS Booster: 4x HDR200 per node). Harmless on CPU-only clusters.
export HOROVOD_GPU_OPERATIONS=${HOROVOD_GPU_OPERATIONS:-NCCL}
export HOROVOD_CYCLE_TIME=${HOROVOD_CYCLE_TIME:-1}
export HOROVOD_FUSION_THRESHOLD=${HOROVOD_FUSION_THRESHOLD:-67108864}
export NCCL_IB_TIMEOUT=${NCCL_IB_TIMEOUT:-20}
export NCCL_SOCKET_IFNAME=${NCCL_SOCKET_IFNAME:-ib0}
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}
export PYTHONUNBUFFERED=1
# Open MPI as root (containers, test clusters) and idle ranks that yield their core
export OMPI_ALLOW_RUN_AS_ROOT=${OMPI_ALLOW_RUN_AS_ROOT:-1}
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=${OMPI_ALLOW_RUN_AS_ROOT_CONFIRM:-1}
export OMPI_MCA_mpi_yield_when_idle=${OMPI_MCA_mpi_yield_when_idle:-1}

covidnetx_run() {
  "$@" &
  local pid=$!
  trap 'echo "covidnetx: signal received, asking the step to checkpoint"; kill -USR1 '"$pid"' 2>/dev/null || true' USR1 TERM
  local rc=0
  while :; do
    rc=0
    wait "$pid" || rc=$?
    kill -0 "$pid" 2>/dev/null || break
  done
  trap - USR1 TERM
  if [ "$rc" -eq 75 ]; then
    local id="${SLURM_JOB_ID}"
    if [ -n "${SLURM_ARRAY_JOB_ID:-}" ]; then id="${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"; fi
    echo "covidnetx: checkpoint saved; requeueing job ${id} (restart count ${SLURM_RESTART_COUNT:-0})"
    scontrol requeue "${id}"
    exit 0
  fi
  return "$rc"
}
