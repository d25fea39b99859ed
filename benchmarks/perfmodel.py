"""A performance model for data-parallel training: projects weak-scaling efficiency to many GPUs.

step time   T(N) = T_c + W(N) + max(0, T_ar(N) - overlap * T_bwd)    (overlap in [0, 1])
efficiency  E(N) = T_c / T(N)                                        (weak scaling, fixed batch per GPU)
stragglers  W(N) = cv * T_c * e_N: a synchronous step waits for the slowest of N ranks. Each rank's
            compute time per step varies with coefficient of variation cv (measured on one rank), the
            ranks independently of each other; e_N = E[max of N iid standard normals] (e_1 = 0,
            e_2 = 1/sqrt(pi) = 0.564, e_4 = 1.029, e_64 = 2.344, e_1024 = 3.248). cv = 0 leaves it out.
ring allreduce of G bytes over N ranks, bandwidth B (bytes/s per rank), latency a (s per message step):
            T_ring(N) = 2 (N-1)/N * G / B + 2 (N-1) a
hierarchical (g GPUs per node, n = N/g nodes; NVLink inside a node, one NIC per GPU between nodes):
            T_hier(N) = 2 (g-1)/g * G / B_intra + 2 (g-1) a_intra           (reduce-scatter + all-gather)
                      + 2 (n-1)/n * (G/g) / B_inter + 2 (n-1) a_inter       (each GPU's shard across nodes)
T_bwd = 2/3 T_c (backward ~ twice the forward). Every input is named with its source in ASSUMPTIONS
or measured by benchmarks/; nothing else enters the numbers.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Machine:
    name: str = "JUWELS Booster"
    gpus_per_node: int = 4
    intra_bw: float = 150e9      # bytes/s per GPU, NCCL bus bandwidth over NVLink3 (A100 SXM4, 4 GPUs)
    intra_lat: float = 5e-6
    inter_bw: float = 22e9       # bytes/s per GPU: one HDR200 NIC (25 GB/s line rate) at ~90% for NCCL
    inter_lat: float = 10e-6
    sources: dict = field(default_factory=lambda: {
        "gpus_per_node": "JUWELS Booster: 4x NVIDIA A100 per node",
        "intra_bw": "assumed: NVLink3 600 GB/s per GPU total; NCCL all-reduce bus bandwidth ~150 GB/s on 4 GPUs",
        "inter_bw": "JUWELS Booster: 4x HDR200 InfiniBand per node = one 200 Gb/s (25 GB/s) NIC per GPU; 90% assumed",
        "latencies": "assumed typical NCCL step latencies: 5 us NVLink, 10 us InfiniBand",
    })


def ring_allreduce_time(nbytes: float, n: int, bw: float, lat: float) -> float:
    if n <= 1:
        return 0.0
    return 2 * (n - 1) / n * nbytes / bw + 2 * (n - 1) * lat


def hierarchical_allreduce_time(nbytes: float, n_gpus: int, m: Machine) -> float:
    g = min(m.gpus_per_node, n_gpus)
    nodes = max(1, n_gpus // g)
    t = ring_allreduce_time(nbytes, g, m.intra_bw, m.intra_lat)
    return t + ring_allreduce_time(nbytes / g, nodes, m.inter_bw, m.inter_lat)


def expected_max_normal(n: int) -> float:
    """E[max of n independent standard normal variables]: the integral of x n phi(x) Phi(x)^(n-1),
    on a grid fine enough for 1e-9 (Phi^(n-1) taken through log Phi, so large n does not underflow)."""
    if n <= 1:
        return 0.0
    import numpy as np
    from scipy.special import log_ndtr
    x, dx = np.linspace(-12.0, 12.0, 240_001, retstep=True)
    f = x * n * np.exp(-0.5 * x * x + (n - 1) * log_ndtr(x)) / np.sqrt(2.0 * np.pi)
    return float(dx * (f.sum() - 0.5 * (f[0] + f[-1])))          # trapezoidal rule


def straggler_time(t_compute: float, cv: float, n: int) -> float:
    """Expected extra time per synchronous step from waiting for the slowest of n ranks (see above)."""
    if cv < 0:
        raise ValueError(f"coefficient of variation {cv} < 0")
    return cv * t_compute * expected_max_normal(n) if cv else 0.0


def efficiency(t_compute: float, t_allreduce: float, overlap: float = 0.0, t_wait: float = 0.0) -> float:
    """Weak-scaling efficiency of a step of compute t_compute, allreduce t_allreduce (overlapped with
    the backward pass by the fraction ``overlap``) and straggler wait t_wait."""
    t_bwd = 2.0 / 3.0 * t_compute
    exposed = max(0.0, t_allreduce - overlap * t_bwd)
    return t_compute / (t_compute + t_wait + exposed)


def shared_efficiency(t_alone: float, t_shared: float, t_allreduce: float, t_wait: float = 0.0,
                      overlap: float = 0.0) -> float:
    """Weak-scaling efficiency where N ranks share a machine: compute takes t_shared per step at N (N
    independent loops at once: contention) against t_alone for one rank, plus the straggler wait and the
    exposed allreduce. t_shared = t_alone gives :func:`efficiency`."""
    return efficiency(t_shared, t_allreduce, overlap, t_wait) * t_alone / t_shared


def project(params: int, t_compute: float, gpu_counts, machine: Machine, *, grad_bytes_per_param: int = 4,
            overlap: float = 0.0, algorithm: str = "hierarchical", step_cv: float = 0.0) -> list:
    """[(N, allreduce seconds, step seconds, efficiency)] for each N in gpu_counts; ``step_cv`` > 0 adds
    the straggler wait of N ranks whose compute time per step varies by that coefficient."""
    g_bytes = params * grad_bytes_per_param
    out = []
    for n in gpu_counts:
        if algorithm == "hierarchical":
            t_ar = hierarchical_allreduce_time(g_bytes, n, machine)
        else:
            t_ar = ring_allreduce_time(g_bytes, n, machine.inter_bw if n > machine.gpus_per_node else machine.intra_bw,
                                       machine.inter_lat if n > machine.gpus_per_node else machine.intra_lat)
        e = efficiency(t_compute, t_ar, overlap, straggler_time(t_compute, step_cv, n))
        out.append((n, t_ar, t_compute / e, e))
    return out
