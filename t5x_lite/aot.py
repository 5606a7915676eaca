"""Ahead-of-time compilation of the real train step (`trainer.jit_train_step`, what `t5x_lite.train`
runs) for a set of devices, and what XLA says about the program: memory per device, FLOPs,
collectives with their bytes, and on TPU the compiler's own time estimate.

The devices may be this host's (`plan --aot`) or compile-only devices of a target this host does
not have (`plan --target=v5p-64`, see targets.py): nothing is allocated, the state and batch are
abstract.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding

from t5x_lite import optimizer, partitioning, trainer
from t5x_lite.models import T5Config

COLLECTIVES = ('all-gather', 'reduce-scatter', 'all-reduce', 'all-to-all', 'collective-permute')
_DTYPE_BYTES = {'pred': 1, 's8': 1, 'u8': 1, 'f8e4m3fn': 1, 'f8e5m2': 1, 'bf16': 2, 'f16': 2,
                's16': 2, 'u16': 2, 'f32': 4, 's32': 4, 'u32': 4, 'f64': 8, 's64': 8, 'u64': 8}
_SHAPE = re.compile(r'\b(pred|[fsu]\d+|bf16|f8e4m3fn|f8e5m2)\[([\d,]*)\]')
_INSTRUCTION = re.compile(
    r'^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.*?)\s+(' + '|'.join(COLLECTIVES) + r')(-start)?\(')
_COMPUTATION = re.compile(r'^(?:ENTRY\s+)?%?([\w.\-]+)\s*\(.*\)\s*->.*\{\s*$')
# cuDNN's fused attention kernels appear as custom calls with these targets.
_FUSED_ATTENTION = re.compile(r'custom_call_target="(__cudnn\$fmha[^"]*|__cudnn\$fhma[^"]*)"')
# jax asks this host's cuDNN for its version while lowering fused attention (cuDNN builds the
# kernel on the GPU at run time); a host without one compiles for the oldest cuDNN that
# jax-cuda12-plugin 0.10.2 accepts (>= 9.8).
TARGET_CUDNN_VERSION = 90800
# Compile-only GPU devices (platform 'cuda'; a real GPU's is 'gpu') cannot autotune, and Triton's
# default tiling failed on an f32 dot: cuBLAS GEMMs instead (what autotuning often picks anyway).
DEVICELESS_COMPILER_OPTIONS = {'cuda': {'xla_gpu_enable_triton_gemm': False}}


@contextlib.contextmanager
def cudnn_version_for_lowering(platform: str):
  """Lowering for a GPU from a host without cuDNN: fused attention sees TARGET_CUDNN_VERSION."""
  from jax._src.cudnn import fused_attention_stablehlo as fused  # pylint: disable=import-outside-toplevel
  original = fused.check_cudnn_version
  if platform in ('gpu', 'cuda'):
    try:
      original()
    except RuntimeError:  # "cuDNN is not detected."
      fused.check_cudnn_version = lambda: TARGET_CUDNN_VERSION
  try:
    yield
  finally:
    fused.check_cudnn_version = original


def _shapes_bytes(text: str) -> list[int]:
  return [_DTYPE_BYTES.get(dtype, 4) * math.prod(int(d) for d in dims.split(',') if d)
          for dtype, dims in _SHAPE.findall(text)]


def _group_size(line: str) -> int:
  """Devices in one replica group: `mesh['a'=4,'b'=2] {'a'}` (4), `{{0,1,2,3},...}` (4) or the
  iota form `[2,4]<=[8]` (4)."""
  mesh = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", line)
  if mesh:
    sizes = dict(re.findall(r"'([^']+)'=(\d+)", mesh.group(1)))
    return math.prod(int(sizes[a]) for a in re.findall(r"'([^']+)'", mesh.group(2)) if a in sizes)
  listed = re.search(r'replica_groups=\{\{([\d,]*)\}', line)
  if listed:
    return len(listed.group(1).split(','))
  iota = re.search(r'replica_groups=\[([\d,]+)\]<=', line)
  return int(iota.group(1).split(',')[-1]) if iota else 1


_CALL = re.compile(r'\b(calls|to_apply|body|condition)=%?([\w.\-]+)')
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"')
_CONDITION = re.compile(r'\bcondition=%?([\w.\-]+)')
_COUNTER_BOUND = re.compile(r'=\s*[su](?:32|64)\[\][^ ]*\s+constant\((\d+)\)')
_BODY = re.compile(r'\bbody=%?([\w.\-]+)')
_TUPLE_INDEX = re.compile(r'get-tuple-element\([^)]*\),\s*index=(\d+)')
_DEFINITION = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$')


def _computations(hlo_text: str) -> tuple[dict[str, list[str]], str | None]:
  """({computation name: its instruction lines}, the ENTRY computation's name)."""
  bodies: dict[str, list[str]] = {}
  entry, computation = None, ''
  for line in hlo_text.splitlines():
    header = _COMPUTATION.match(line)
    if header:
      computation = header.group(1)
      entry = computation if line.startswith('ENTRY') else entry
      bodies[computation] = []
    elif computation:
      bodies[computation].append(line)
  return bodies, entry


def _trip_count(line: str, bodies: dict[str, list[str]]) -> int:
  """A `while`'s iterations: XLA:GPU/CPU's known_trip_count, else from its condition (XLA:TPU):
  the counter runs from 0 while `i < bound`, growing by the step its body adds (jax's scan: 1;
  XLA:TPU's windowed einsums, unrolled twice: 2), else 1."""
  known = _TRIP_COUNT.search(line)
  if known:
    return int(known.group(1))
  condition = _CONDITION.search(line)
  cond = bodies.get(condition.group(1) if condition else '', [])
  bounds = [int(n) for l in cond for n in _COUNTER_BOUND.findall(l)]
  counters = [int(i) for l in cond for i in _TUPLE_INDEX.findall(l)]
  if len(bounds) != 1 or 'direction=LT' not in ''.join(cond):
    return 1
  body = _BODY.search(line)
  step = (_counter_step(bodies.get(body.group(1), []), counters[0])
          if body and len(counters) == 1 else 1)
  return -(-bounds[0] // step)


def _counter_step(body: list[str], index: int) -> int:
  """What a loop body adds to tuple element `index` (its counter): the constant in the `add`
  that the body's ROOT tuple returns at that index; 1 where the body says otherwise."""
  defs = dict(m.groups() for m in map(_DEFINITION.match, body) if m)
  root = next((l for l in body if l.lstrip().startswith('ROOT')), '')
  operands = re.search(r'\btuple\(([^)]*)\)', re.sub(r'/\*.*?\*/', '', root))
  names = [o.strip().lstrip('%') for o in operands.group(1).split(',')] if operands else []
  add = re.search(r'\badd\(%?([\w.\-]+),\s*%?([\w.\-]+)\)',
                  defs.get(names[index], '') if index < len(names) else '')
  steps = [int(c.group(1)) for c in (re.search(r'\bconstant\((\d+)\)', defs.get(a, ''))
                                     for a in (add.groups() if add else ())) if c]
  return steps[0] if len(steps) == 1 and steps[0] > 0 else 1


def executions(hlo_text: str) -> dict[str, int]:
  """How many times each computation runs per step: a `while` body as many times as its loop
  runs (a scanned stack: once per layer), through any nesting of calls."""
  return _executions(*_computations(hlo_text))


def _executions(bodies: dict[str, list[str]], entry: str | None) -> dict[str, int]:
  calls = {name: [(callee, _trip_count(line, bodies) if kind == 'body' else 1)
                  for line in lines for kind, callee in _CALL.findall(line)]
           for name, lines in bodies.items()}
  runs: dict[str, int] = {}

  def visit(name: str, times: int) -> None:
    runs[name] = runs.get(name, 0) + times
    for callee, n in calls.get(name, ()):
      visit(callee, times * n)

  if entry:
    visit(entry, 1)
  return runs


def loop_trip_counts(hlo_text: str) -> list[int]:
  """How often each of the program's own `while` loops runs (scanned layers, microbatches),
  largest first. XLA:TPU's windowed einsums (collective matmuls, bodies named
  windowed_dot_general_body_*) are left out: its time estimate counts them in full (XL, 2 layers
  on v5p-64: 12.80 ms with them, 12.96 ms compiled without), only its FLOP count does not."""
  bodies, _ = _computations(hlo_text)
  return sorted((_trip_count(line, bodies) for lines in bodies.values() for line in lines
                 if re.search(r'\bwhile\(', line)
                 and 'windowed_dot_general_body' not in (_BODY.search(line) or [''])[0]),
                reverse=True)


def collectives(hlo_text: str) -> dict[str, dict[str, float]]:
  """{kind: {'count', 'bytes'}} over the compiled program's collectives per step: an op inside a
  `while` body counts once per iteration (`executions`), unlike XLA's cost analysis.

  'bytes' is the whole buffer each op assembles or reduces, per device: an all-gather's result, a
  reduce-scatter's input (its result times the group), an all-reduce's, all-to-all's or
  permute's result. Async '-start' ops may return (operands, results); XLA:TPU writes a reduce-scatter
  as an all-reduce inside a computation named all-reduce-scatter, counted as a reduce-scatter;
  its windowed einsums (collective matmuls) move weight shards by collective-permute-start, whose
  (operand, result, contexts) tuple is one buffer.
  """
  out = {kind: {'count': 0, 'bytes': 0.0} for kind in COLLECTIVES}
  bodies, entry = _computations(hlo_text)
  runs = _executions(bodies, entry)
  for computation, line in ((c, l) for c, lines in bodies.items() for l in lines):
    m = _INSTRUCTION.match(line)
    if not m:
      continue
    result, kind, start = m.groups()
    sizes = _shapes_bytes(result)
    paired = start and result.startswith('((') and len(sizes) % 2 == 0  # (operands, results)
    if paired:
      sizes = sizes[:len(sizes) // 2] if kind == 'reduce-scatter' else sizes[len(sizes) // 2:]
    size = sum(sizes)
    if kind == 'collective-permute' and start:  # (operand, result, u32 contexts): one buffer
      size = max(sizes, default=0)
    if kind == 'reduce-scatter' and not paired:
      size *= _group_size(line)
    elif kind == 'all-reduce' and computation.startswith('all-reduce-scatter'):
      kind = 'reduce-scatter'
    times = runs.get(computation, 1)
    out[kind]['count'] += times
    out[kind]['bytes'] += size * times
  return out


def minimum_collective_bytes(preset: str, compute_bytes: float) -> float | None:
  """The least a step can move under `preset`, in the units of `collectives` (whole buffers), with
  every parameter in the compute dtype (`compute_bytes` in all): FSDP gathers each parameter for
  the forward and again for the backward pass and reduce-scatters its gradient once (the gradient
  of the compute-dtype copy, which XLA reduces before casting it to the parameter's dtype); data
  parallelism all-reduces the gradients once. None for presets without such a simple bound (2d
  also moves activations)."""
  if preset == 'fsdp':
    return 3 * compute_bytes
  if preset == 'data_parallel':
    return compute_bytes
  return None


def compile_train_step(model_config: T5Config, devices: Sequence, mesh_shape: Mapping[str, int],
                       task_feature_lengths: Mapping[str, int], rules, batch_size: int,
                       compiler_options: dict | None = None) -> dict:
  """Lowers and compiles the train step over a mesh of `devices` from abstract state and batch,
  and returns XLA's per-device figures plus the compile time."""
  if compiler_options is None:
    compiler_options = DEVICELESS_COMPILER_OPTIONS.get(devices[0].platform)
  mesh = partitioning.create_mesh(mesh_shape, list(devices))
  tx = optimizer.make_optimizer(optimizer.learning_rate_schedule())
  setup = trainer.setup_train_state(model_config, tx, 0, mesh, rules)
  from t5x_lite.data import pipeline  # pylint: disable=import-outside-toplevel  (seqio, TF)
  feature_lengths = pipeline.feature_converter(model_config).get_model_feature_lengths(
      task_feature_lengths)
  batch_sharding = NamedSharding(mesh, partitioning.logical_to_mesh_spec(('batch', 'length'),
                                                                         rules, mesh))
  batch = {k: jax.ShapeDtypeStruct((batch_size, n), jnp.int32, sharding=batch_sharding)
           for k, n in feature_lengths.items()}
  t = time.perf_counter()
  with (jax.set_mesh(mesh), nnx.logical_axis_rules(rules),
        cudnn_version_for_lowering(devices[0].platform)):
    step = trainer.jit_train_step(setup, batch_sharding, compiler_options=compiler_options)
    compiled = step.lower(setup.abstract_state, batch).compile()
  compile_s = time.perf_counter() - t
  memory = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
  text = compiled.as_text()
  cudnn_calls = len(_FUSED_ATTENTION.findall(text))
  params_bytes = sum(x.size * x.dtype.itemsize
                     for x in jax.tree.leaves(setup.abstract_state['params']))
  return {
      'platform': devices[0].platform,
      'device_kind': devices[0].device_kind,
      'compile_s': compile_s,
      'argument_bytes': memory.argument_size_in_bytes,
      'output_bytes': memory.output_size_in_bytes,
      'alias_bytes': memory.alias_size_in_bytes,
      'temp_bytes': memory.temp_size_in_bytes,
      'generated_code_bytes': memory.generated_code_size_in_bytes,
      'memory_per_chip_bytes': (memory.argument_size_in_bytes + memory.output_size_in_bytes
                                - memory.alias_size_in_bytes + memory.temp_size_in_bytes),
      'flops': float(cost['flops']) if 'flops' in cost else None,
      'optimal_seconds': float(cost['optimal_seconds']) if 'optimal_seconds' in cost else None,
      'collectives': collectives(text),
      'while_loops': len(re.findall(r'\bwhile\(', text)),
      'loop_trip_counts': loop_trip_counts(text),
      'fused_attention': cudnn_calls > 0,
      'cudnn_attention_calls': cudnn_calls,
      'params_bytes': params_bytes,
      'compute_params_bytes': params_bytes * jnp.dtype(model_config.dtype).itemsize // 4,
  }
