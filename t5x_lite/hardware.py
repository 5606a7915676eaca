"""Peak FLOP/s and memory of the chips we run on, for MFU and for the planner.

Accelerator figures are the vendors' published dense bf16 peaks; a CPU has no published figure that
means anything for XLA, so its peak is measured once with a large jitted matmul.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp

# name: (peak dense bf16 FLOP/s per chip, HBM bytes per chip)
CHIPS = {
    'tpu_v4': (275e12, 32 * 2**30),
    'tpu_v5e': (197e12, 16 * 2**30),
    'tpu_v5p': (459e12, 95 * 2**30),
    'h100': (989e12, 80 * 2**30),
    'a100': (312e12, 80 * 2**30),
}

_DEVICE_KIND_TO_CHIP = (
    ('v5p', 'tpu_v5p'), ('v5 lite', 'tpu_v5e'), ('v5e', 'tpu_v5e'), ('v4', 'tpu_v4'),
    ('h100', 'h100'), ('h200', 'h100'), ('a100', 'a100'),
)


def chip_for_device(device: jax.Device) -> str | None:
  kind = device.device_kind.lower()
  for needle, chip in _DEVICE_KIND_TO_CHIP:
    if needle in kind:
      return chip
  return None


@functools.lru_cache(maxsize=None)
def measured_matmul_flops(n: int = 2048, dtype: str = 'float32', repeats: int = 5) -> float:
  """FLOP/s of a jitted n×n matmul on the default device (best of `repeats`)."""
  a = jnp.ones((n, n), dtype)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best = float('inf')
  for _ in range(repeats):
    t = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n**3 / best


def peak_flops_per_device(device: jax.Device | None = None) -> float:
  """Published peak for known accelerators; measured matmul FLOP/s otherwise (CPU)."""
  device = device or jax.devices()[0]
  chip = chip_for_device(device)
  if chip is not None:
    return CHIPS[chip][0]
  return measured_matmul_flops() / max(1, jax.local_device_count())
