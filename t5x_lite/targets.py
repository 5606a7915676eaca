"""What `plan --target=NAME` compiles for: a Cloud TPU slice or a GPU cluster, as compile-only
devices on this host (no accelerator needed).

TPU names are Cloud accelerator types: `v4-8` ... `v4-4096`, `v5p-8` ... `v5p-12288` (the number
counts TensorCores, two per chip: v5p-64 is 32 chips), `v5e-N` / `v5litepod-N` and `v6e-N` (N chips),
and multi-slice `2xv5p-256`. libtpu lays them out (`jax.experimental.topologies`); the topology
grows by doubling the smallest axis, as Cloud TPU slices do (v5p-64 is 2x4x4, v5e-128 is 8x16), and
full 3-D cubes (every axis >= 4) and 16-chip 2-D axes wrap around. GPU names are `CHIPxN`
(`h100x8`, `a100x32`, `h200x64`, `b200x8`): N GPUs in nodes of 8, compiled by the CUDA plugin for
one published chip description each (`GPU_TARGET_CONFIGS`).
"""

from __future__ import annotations

import math
import os
import re
from typing import NamedTuple

from t5x_lite.gin_utils import UsageError

# (libtpu topology prefix, chip in hardware.CHIPS, TensorCores per chip in the type's number,
#  dimensions, chip config).
_TPU_FAMILIES = {
    'v4': ('v4', 'tpu_v4', 2, 3, 'megacore'),
    'v5p': ('v5', 'tpu_v5p', 2, 3, 'megacore'),
    'v5e': ('v5e', 'tpu_v5e', 1, 2, 'default'),
    'v5litepod': ('v5e', 'tpu_v5e', 1, 2, 'default'),
    'v6e': ('v6e', 'tpu_v6e', 1, 2, 'default'),
}
_LARGEST_SLICE = {'v4': 4096, 'v5': 6144, 'v5e': 256, 'v6e': 256}  # chips

# Published GPU descriptions (NVIDIA datasheets and CUDA device properties: SMs, L2, shared memory
# per SM, HBM size and bandwidth, boost clock), in XLA's GpuTargetConfigProto text format.
_GPU = '''gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: {smem_per_sm}
  threads_per_core_limit: {threads_per_sm}
  core_count: {sms}
  fpus_per_core: {fpus}
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {bandwidth}
  l2_cache_size: {l2}
  clock_rate_ghz: {clock}
  device_memory_size: {memory}
  shared_memory_per_block_optin: {smem_optin}
  cuda_compute_capability {{
    major: {cc_major}
    minor: {cc_minor}
  }}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}}
platform_name: "CUDA"
dnn_version_info {{
  major: 9
  minor: 8
}}
runtime_version {{
  major: 12
  minor: 8
}}
device_description_str: "{name}"
'''
_HOPPER = dict(smem_per_sm=233472, smem_optin=232448, threads_per_sm=2048, sms=132, fpus=128,
               l2=52428800, clock=1.98, cc_major=9, cc_minor=0)
GPU_TARGET_CONFIGS = {
    'a100': _GPU.format(smem_per_sm=167936, smem_optin=166912, threads_per_sm=2048, sms=108,
                        fpus=64, bandwidth=2039000000000, l2=41943040, clock=1.41,
                        memory=85196873728, cc_major=8, cc_minor=0,
                        name='NVIDIA A100-SXM4-80GB'),
    'h100': _GPU.format(**_HOPPER, bandwidth=3352320000000, memory=84929347584,
                        name='NVIDIA H100 80GB HBM3'),
    'h200': _GPU.format(**_HOPPER, bandwidth=4800000000000, memory=150121545728,
                        name='NVIDIA H200'),
    'b200': _GPU.format(smem_per_sm=233472, smem_optin=232448, threads_per_sm=2048, sms=148,
                        fpus=128, bandwidth=8000000000000, l2=132644864, clock=1.965,
                        memory=191514279936, cc_major=10, cc_minor=0, name='NVIDIA B200'),
}
GPUS_PER_NODE = 8


class Target(NamedTuple):
  """A parsed `--target`: enough to ask libtpu or the CUDA plugin for its devices."""
  name: str
  platform: str          # 'tpu' or 'cuda'
  chip: str              # key of hardware.CHIPS
  num_chips: int         # in all slices / nodes
  num_slices: int        # TPU slices joined over DCN, or GPU nodes
  topology: str          # libtpu 'v5:2x4x4', or the CUDA plugin's 'slices x hosts x chips'
  wrap: tuple[bool, ...] = ()
  chip_config: str = ''


def _grid(chips: int, dims: int) -> list[int] | None:
  """Cloud TPU's slice shape for `chips`: from 2x2(x1), double the last of the smallest axes."""
  shape = [2, 2, 1] if dims == 3 else [2, 2]
  if chips == 1:
    return [1] * dims
  if dims == 3 and chips >= 8:
    shape = [2, 2, 2]
  while math.prod(shape) < chips:
    smallest = min(shape)
    i = max(j for j, n in enumerate(shape) if n == smallest)
    shape[i] *= 2
  return shape if math.prod(shape) == chips else None


def parse(name: str) -> Target:
  """`name` as a Target, or a UsageError saying which names exist."""
  text = name.strip().lower()
  gpu = re.fullmatch(r'([a-z]\d+)x(\d+)', text)
  if gpu:
    chip, n = gpu.group(1), int(gpu.group(2))
    if chip not in GPU_TARGET_CONFIGS:
      raise UsageError(f'--target {name}: no GPU description for {chip!r}; GPU targets are '
                       f'{", ".join(f"{c}xN" for c in sorted(GPU_TARGET_CONFIGS))}.')
    if n < 1 or (n > GPUS_PER_NODE and n % GPUS_PER_NODE):
      raise UsageError(f'--target {name}: {n} GPUs do not fill nodes of {GPUS_PER_NODE}; use '
                       f'1-{GPUS_PER_NODE} GPUs or a multiple of {GPUS_PER_NODE}.')
    nodes = max(1, n // GPUS_PER_NODE)
    return Target(name, 'cuda', chip, n, nodes, f'1x{nodes}x{n // nodes}')
  tpu = re.fullmatch(r'(?:(\d+)x)?(v4|v5p|v5e|v5litepod|v6e)-(\d+)', text)
  if not tpu:
    raise UsageError(f'--target {name!r} is not a Cloud TPU type (v4-8, v5p-64, v5e-16, v6e-8, '
                     f'2xv5p-256) or a GPU cluster ({", ".join(f"{c}x8" for c in sorted(GPU_TARGET_CONFIGS))}'
                     ', h100x32).')
  slices, family, cores = int(tpu.group(1) or 1), tpu.group(2), int(tpu.group(3))
  prefix, chip, cores_per_chip, dims, chip_config = _TPU_FAMILIES[family]
  chips = cores // cores_per_chip
  shape = _grid(chips, dims) if cores % cores_per_chip == 0 and chips >= 1 else None
  if shape is None or chips > _LARGEST_SLICE[prefix] or slices < 1:
    raise UsageError(
        f'--target {name}: {family}-{cores} is not a slice Cloud TPU offers ({family} counts '
        f'{"TensorCores, two per chip" if cores_per_chip == 2 else "chips"}; sizes are powers of '
        f'two up to {_LARGEST_SLICE[prefix] * cores_per_chip}, e.g. {family}-'
        f'{8 if cores_per_chip == 2 else 16}).')
  if dims == 3:
    wrap = (all(n >= 4 for n in shape),) * 3
  else:
    wrap = tuple(n == 16 for n in shape) + (False,)
  return Target(name, 'tpu', chip, chips * slices, slices,
                f'{prefix}:{"x".join(map(str, shape))}', wrap, chip_config)


def devices(target: Target) -> list:
  """The target's compile-only devices, in the order libtpu or the CUDA plugin gives them."""
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  if os.environ.get('JAX_PLATFORMS') == 'cpu':
    # Compile-only: no chip is opened, so two planners (or test workers) may load libtpu at once;
    # by default its lock file lets one process per host have it.
    os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', 'true')
  try:
    if target.platform == 'tpu':
      dims = target.topology.split(':')[1].split('x')
      bounds = (2, 2, 1) if math.prod(map(int, dims)) >= 4 else (*map(int, dims), 1)[:3]
      desc = topologies.get_topology_desc(
          platform='tpu', topology_name=target.topology, chip_config_name=target.chip_config,
          chips_per_host_bounds=bounds, num_slices=target.num_slices,
          wrap=target.wrap if len(target.wrap) == 3 else (False, False, False))
    else:
      desc = topologies.get_topology_desc(
          target.chip, 'cuda', target_config=GPU_TARGET_CONFIGS[target.chip],
          topology=target.topology)
  except Exception as e:  # pylint: disable=broad-except  (a missing plugin surfaces many ways)
    raise UsageError(
        f'--target {target.name}: cannot make compile-only {target.platform.upper()} devices '
        f'({type(e).__name__}: {(str(e).splitlines() or [""])[0][:200]}); install the compilers '
        f'with `make install` (setup.cfg extra "test" includes them) or pip install '
        f"'.[aot]'.") from e
  return list(desc.devices)
