"""Ray tasks that wrap ``engine`` kernels."""

from __future__ import annotations

import numpy as np
import ray

from engine.device import resolve_device
from engine.select_k import CandidateScore, score_candidate


@ray.remote(num_cpus=1, max_retries=1, retry_exceptions=False)  # then cluster.gather backs off
def score_k_task(sample: np.ndarray, k: int, repeats: int, seed: int, device: str = "auto") -> CandidateScore:
    """One candidate k of the choice of k (candidates run in parallel as separate tasks)."""
    return score_candidate(sample, k, repeats, seed, resolve_device(device, ray.get_gpu_ids()))
