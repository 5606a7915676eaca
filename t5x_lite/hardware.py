"""Peak FLOP/s, memory and interconnect of the chips we run on, for MFU and for the planner.

Accelerator figures are the vendors' published numbers; a CPU has no published figure that means
anything for XLA, so its peak is measured once with a large jitted matmul.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import time
from typing import NamedTuple

import gin
import jax
import jax.numpy as jnp

from t5x_lite import paths, storage


# XLA options for compiling the train step on CPU (figures: T5.1.1-small, batch 8, 512/114, two
# AVX2 cores, both variants timed alternately in one process).
CPU_COMPILER_OPTIONS = {
    # YNNPACK for dots only. Its reduction and elementwise fusions, on by default, ran the step's
    # large reductions far below memory speed: 10.8 -> 9.3 s per step without them.
    'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT',
    # XLA:CPU expands the optimization barriers that jax.checkpoint places around recomputation and
    # CSE then merges the recomputed forward pass back into the saved one, so remat would save no
    # memory. Keeping the barriers makes CPU remat behave as on TPU/GPU.
    'xla_disable_hlo_passes': 'cse_barrier_expander',
}


def compiler_options(platform: str | None = None) -> dict[str, str] | None:
  """Options for `jax.jit(..., compiler_options=...)` of train/eval steps on this platform."""
  platform = platform or jax.devices()[0].platform
  return dict(CPU_COMPILER_OPTIONS) if platform == 'cpu' else None


class Chip(NamedTuple):
  """One accelerator. Bandwidths are bytes/s per chip in one direction.

  `ici_bandwidth` joins the chips of one slice (TPU ICI) or node (GPU NVLink);
  `dcn_bandwidth` joins slices or nodes (TPU data-centre network, a GPU's own InfiniBand NIC);
  `devices_per_node` is the most chips one ICI/NVLink domain holds. Index 0 is the peak and
  index 1 the HBM size, as in the (peak, hbm) pairs this table used to hold.
  """
  peak_flops: float            # dense bf16 FLOP/s (no structured sparsity)
  hbm_bytes: float
  hbm_bandwidth: float
  ici_bandwidth: float
  dcn_bandwidth: float | None  # None: not published
  devices_per_node: int


GiB = 2**30

# Sources. TPUs: Cloud TPU system-architecture pages (cloud.google.com/tpu/docs/v4, /v5e, /v5p):
# v4 275 TFLOP/s, 32 GiB at 1200 GB/s; v5e 197 TFLOP/s, 16 GiB at 819 GB/s, ICI 400 GB/s
# bidirectional per chip, 2 x 100 Gb/s NICs per 8-chip host; v5p 459 TFLOP/s, 95 GiB at
# 2765 GB/s, ICI 1200 GB/s bidirectional per chip, DCN 50 Gb/s per chip. v4 ICI: six links of
# 50 GB/s per direction (Jouppi et al., "TPU v4", ISCA 2023); Google publishes no per-chip DCN
# figure for v4. The largest single slice: 4096 (v4), 256 (v5e), 6144 (v5p) chips.
# v6e (Trillium): 918 TFLOP/s, 32 GiB at 1640 GB/s, ICI 800 GB/s bidirectional per chip, 256-chip
# slices (cloud.google.com/tpu/docs/v6e).
# GPUs: NVIDIA H100 SXM5 and A100 SXM4 80GB datasheets: 989 / 312 TFLOP/s dense bf16,
# 3.35 / 2.04 TB/s HBM, NVLink 900 / 600 GB/s bidirectional per GPU; DGX/HGX nodes of 8 GPUs with
# one ConnectX-7 400 Gb/s (H100) or HDR 200 Gb/s (A100) InfiniBand NIC per GPU. H200: the H100's
# compute with 141 GB at 4.8 TB/s. B200 (HGX B200): 2.25 PFLOP/s dense bf16, 180 GB at 8 TB/s,
# NVLink 5 1.8 TB/s bidirectional, one 400 Gb/s NIC per GPU.
CHIPS: dict[str, Chip] = {
    'tpu_v4': Chip(275e12, 32 * GiB, 1200e9, 6 * 50e9, None, 4096),
    'tpu_v5e': Chip(197e12, 16 * GiB, 819e9, 400e9 / 2, 2 * 100e9 / 8 / 8, 256),
    'tpu_v5p': Chip(459e12, 95 * GiB, 2765e9, 1200e9 / 2, 50e9 / 8, 6144),
    'tpu_v6e': Chip(918e12, 32 * GiB, 1640e9, 800e9 / 2, None, 256),
    'h100': Chip(989e12, 80 * GiB, 3.35e12, 900e9 / 2, 400e9 / 8, 8),
    'h200': Chip(989e12, 141e9, 4.8e12, 900e9 / 2, 400e9 / 8, 8),
    'b200': Chip(2250e12, 180e9, 8e12, 1800e9 / 2, 400e9 / 8, 8),
    'a100': Chip(312e12, 80 * GiB, 2.039e12, 600e9 / 2, 200e9 / 8, 8),
}

# Substrings of `device_kind`, first match wins: libtpu calls v5p 'TPU v5' and v5e 'TPU v5 lite'.
_DEVICE_KIND_TO_CHIP = (
    ('v5 lite', 'tpu_v5e'), ('v5e', 'tpu_v5e'), ('v5p', 'tpu_v5p'), ('tpu v5', 'tpu_v5p'),
    ('v6 lite', 'tpu_v6e'), ('v6e', 'tpu_v6e'), ('v4', 'tpu_v4'), ('h100', 'h100'),
    ('h200', 'h200'), ('b200', 'b200'), ('a100', 'a100'),
)


def get_chip(name: str) -> Chip:
  """The table entry for `name`, or a ValueError that lists the known chips."""
  if name not in CHIPS:
    raise ValueError(f'unknown chip {name!r}; choose one of {", ".join(sorted(CHIPS))}.')
  return CHIPS[name]


def chip_for_device(device: jax.Device) -> str | None:
  kind = device.device_kind.lower()
  for needle, chip in _DEVICE_KIND_TO_CHIP:
    if needle in kind:
      return chip
  return None


def _best_seconds(fn, x: jax.Array, repeats: int) -> float:
  """Fastest of `repeats` timed calls of jitted `fn(x)`, after one call that compiles it."""
  f = jax.jit(fn)
  f(x).block_until_ready()
  best = float('inf')
  for _ in range(repeats):
    t = time.perf_counter()
    f(x).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return best


@functools.lru_cache(maxsize=None)
def measured_matmul_flops(n: int = 2048, dtype: str = 'float32', repeats: int = 5) -> float:
  """FLOP/s of a jitted n×n matmul on the default device (best of `repeats`)."""
  return 2 * n**3 / _best_seconds(lambda x: x @ x, jnp.ones((n, n), dtype), repeats)


@functools.lru_cache(maxsize=None)
def measured_memory_bandwidth(mib: int = 256, repeats: int = 5) -> float:
  """Bytes/s read plus written by a jitted elementwise pass over a `mib` MiB float32 array (best
  of `repeats`) on the default device: what bounds every pass over activations that a dot does
  not hide, e.g. the softmax over [batch, heads, q, k] logits."""
  x = jnp.ones((mib * 2**20 // 4,), jnp.float32)
  return 2 * x.nbytes / _best_seconds(lambda v: v * 1.5 + 1.0, x, repeats)


def cpu_matmul_flops(remeasure: bool = False) -> float:
  """measured_matmul_flops on this CPU, measured once per machine, device count and jax version
  and kept in the cache dir (cpu_peak_flops.json): measuring takes 1-2 s, which every run's
  start-up paid for its MFU line. `remeasure`: measure now (benchmarks) and keep that."""
  path = paths.cache_dir() / 'cpu_peak_flops.json'
  key = '|'.join([jax.__version__, platform.processor() or platform.machine(),
                  str(os.cpu_count()), str(jax.local_device_count()),
                  os.environ.get('XLA_FLAGS', '')])
  try:
    known = json.loads(path.read_text())
  except (OSError, ValueError):
    known = {}
  if remeasure or not isinstance(known.get(key), float):
    known[key] = measured_matmul_flops()
    try:
      path.parent.mkdir(parents=True, exist_ok=True)
      storage.write_atomically(path, json.dumps(known, indent=1))
    except OSError:
      pass  # a read-only cache dir: measure again next time
  return known[key]


@gin.configurable
def peak_flops_per_device(device: jax.Device | None = None,
                          peak_flops: float | None = None, remeasure: bool = False) -> float | None:
  """The peak MFU divides by: `peak_flops` when set (gin), the published dense bf16 peak of a
  chip in CHIPS, a measured matmul on CPU (cpu_matmul_flops; `remeasure` skips its cache); None
  for an accelerator missing from CHIPS, whose MFU is unknown rather than guessed (a measured f32
  matmul there was up to 8x off)."""
  if peak_flops:
    return float(peak_flops)
  device = device or jax.devices()[0]
  chip = chip_for_device(device)
  if chip is not None:
    return CHIPS[chip].peak_flops
  if device.platform == 'cpu':
    return cpu_matmul_flops(remeasure) / max(1, jax.local_device_count())
  return None


def unknown_peak_message(device: jax.Device | None = None) -> str:
  kind = (device or jax.devices()[0]).device_kind
  return (f'MFU unknown: no published peak for device kind {kind!r} in hardware.CHIPS; to report '
          'it, set its dense bf16 FLOP/s per device with '
          '--gin.peak_flops_per_device.peak_flops=9.89e14 (or add the chip to the table).')
