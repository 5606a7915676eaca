"""`python -m t5x_lite.plan --gin_file=MODEL.gin [--gin_file=RUN.gin] --chip=tpu_v5p --num_devices=64`

Says what a configuration costs before a job is launched, without allocating anything:

* the exact parameter count (from `nnx.eval_shape`) and training FLOPs per step;
* bytes per device of params, gradients and optimizer state under the mesh and the sharding rules;
* activation bytes per device for each remat policy ('none', 'minimal', 'full'), estimated from
  the residuals each layer keeps for the backward pass (see `activation_bytes`), and whether the
  total fits the chip's HBM with 10% headroom (XLA workspace, fragmentation, runtime);
* a roofline step time and MFU (see `roofline`);
* with `--aot`, XLA's own figures: the real train step lowered and compiled for the devices JAX
  sees, with `memory_analysis()` and `cost_analysis()` printed next to the estimates.

Devices need not exist except for `--aot`: the mesh is abstract. Chip figures live in hardware.py.
"""

from __future__ import annotations

if __name__ == '__main__':
  # `--help` answers before the imports below (JAX, TensorFlow: seconds); a run goes to the
  # importable module rather than this copy under __main__, so gin registers each function once.
  import sys
  from t5x_lite import cli
  sys.exit(cli.main('plan'))

import ast
import functools
import json
import math
from typing import Callable, Mapping, Sequence

import gin
import jax
from jax.sharding import AbstractMesh, AxisType

from t5x_lite import aot, cli, gin_utils, hardware, optimizer, partitioning, targets, trainer
from t5x_lite import models
from t5x_lite.models import T5Config
from t5x_lite.models.config import REMAT_POLICIES

HBM_HEADROOM = 0.10  # fraction of HBM left for XLA's workspace, fragmentation and the runtime



# ----------------------------------------------------------------------------- sharding helpers


class _Layout:
  """Per-device sizes of logically named arrays under a rule table and a mesh shape."""

  def __init__(self, rules, mesh_shape: Mapping[str, int]):
    self.rules, self.shape = rules, dict(mesh_shape)
    self.mesh = AbstractMesh(tuple(self.shape.values()), tuple(self.shape),
                             axis_types=(AxisType.Auto,) * len(self.shape))

  def axes(self, names) -> tuple[str, ...]:
    """Mesh axes that shard an array with these logical names, over all of its dimensions."""
    out = []
    for a in partitioning.logical_to_mesh_spec(names, self.rules, self.mesh):
      out += [a] if isinstance(a, str) else list(a or ())
    return tuple(out)

  def size(self, axes: Sequence[str]) -> int:
    return math.prod(self.shape[a] for a in axes)

  def per_device(self, names, shape, itemsize: float, drop: Sequence[str] = ()) -> float:
    """Bytes per device; a dimension its mesh axes do not divide is replicated (as
    partitioning.shardings_for does). Axes in `drop` are treated as gathered."""
    spec = partitioning.logical_to_mesh_spec(names, self.rules, self.mesh)
    n = 1
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
      axes = tuple(a for a in ((axes,) if isinstance(axes, str) else axes or ()) if a not in drop)
      if axes and dim % self.size(axes) == 0:
        n *= dim // self.size(axes)
      else:
        n *= dim
    return n * itemsize


def _batch_axes(layout: _Layout) -> tuple[str, ...]:
  return layout.axes(('batch',))


# ----------------------------------------------------------------------------- activations


ACT = ('batch', 'length', 'embed')
HEADS = ('batch', 'length', 'heads', 'kv')
SCORES = ('batch', 'heads', 'length', None)
HIDDEN = ('batch', 'length', 'mlp')


def _norm_residuals(cfg: T5Config, b: int, length: int) -> list:
  """A pre-norm's input (its output and the rsqrt are recomputed inside the backward fusions)."""
  return [(ACT, (b, length, cfg.d_model), cfg.compute_dtype.itemsize)]


def _attention_residuals(cfg: T5Config, b: int, lq: int, lk: int, policy: str,
                         tpu: bool) -> list:
  """(logical names, shape, bytes per element) that one attention sublayer keeps."""
  c = cfg.compute_dtype.itemsize
  x, q = (ACT, (b, lq, cfg.d_model), c), (HEADS, (b, lq, cfg.num_heads, cfg.d_kv), c)
  kv = (HEADS, (b, lk, cfg.num_heads, cfg.d_kv), c)
  if policy == 'minimal':  # outputs of the weight matmuls: q, k, v and the output projection
    return [q, kv, kv, x]
  # the norm's input; q, k, v; the unnormalised softmax weights; weights·v (the projection's input)
  out = _norm_residuals(cfg, b, lq) + [q, kv, kv, (SCORES, (b, cfg.num_heads, lq, lk), c), q]
  if not tpu:  # the norm's output, the q/k/v projections' input
    out.append(x)
  if cfg.dropout_rate:
    out.append((ACT, (b, lq, cfg.d_model), 1))  # dropout mask
  return out


def _mlp_residuals(cfg: T5Config, b: int, length: int, policy: str, tpu: bool) -> list:
  c = cfg.compute_dtype.itemsize
  x, hidden = (ACT, (b, length, cfg.d_model), c), (HIDDEN, (b, length, cfg.d_ff), c)
  n_in = len(cfg.mlp_activations)
  if policy == 'minimal':  # the wi outputs and the wo output
    return [hidden] * n_in + [x]
  # the norm's input and each wi output; activations and the gated product are recomputed
  out = _norm_residuals(cfg, b, length) + [hidden] * n_in
  if not tpu:  # the norm's output and the wo projection's input
    out += [x, hidden]
  if cfg.dropout_rate:
    out += [(HIDDEN, (b, length, cfg.d_ff), 1), (ACT, (b, length, cfg.d_model), 1)]
  return out


def _layer_residuals(cfg, b, length, cross_length, policy, tpu: bool) -> list:
  """What one encoder (cross_length None) or decoder layer keeps for its backward pass."""
  if policy == 'full':
    return [(ACT, (b, length, cfg.d_model), cfg.compute_dtype.itemsize)]  # the layer input
  out = _attention_residuals(cfg, b, length, length, policy, tpu)
  if cross_length:
    out += _attention_residuals(cfg, b, length, cross_length, policy, tpu)
  out += _mlp_residuals(cfg, b, length, policy, tpu)
  if policy == 'minimal':
    out.append((ACT, (b, length, cfg.d_model), cfg.compute_dtype.itemsize))  # the layer input
  return out


def _stacks(cfg: T5Config, lengths: Mapping[str, int]) -> list[tuple[int, int, int | None]]:
  """(num_layers, length, cross-attention length or None) per stack."""
  if cfg.architecture == 'encoder_decoder':
    return [(cfg.num_encoder_layers, lengths['inputs'], None),
            (cfg.num_decoder_layers, lengths['targets'], lengths['inputs'])]
  length = lengths['targets'] + (lengths['inputs'] if cfg.architecture == 'prefix_lm' else 0)
  return [(cfg.num_decoder_layers, length, None)]


def activation_bytes(cfg: T5Config, lengths: Mapping[str, int], batch: int, rules,
                     mesh_shape: Mapping[str, int], policy: str, platform: str = 'gpu') -> float:
  """Bytes per device live at the peak of the backward pass under `policy` (an estimate).

  Per layer, the residuals its backward pass reads, after XLA's fusion. 'none': each pre-norm's
  input; q, k, v, the unnormalised softmax weights and weights·v of each attention
  (layers.dot_product_attention keeps exactly these); each MLP projection's output. Elementwise
  intermediates (activations, the gated product) are left out: JAX's autodiff saves them, but
  XLA recomputes them inside the backward fusions. On `platform` 'tpu' the matmuls' inputs (norm
  outputs, the gated product) are recomputed too, as XLA:TPU fuses elementwise producers into
  its convolutions; XLA:GPU's cuBLAS GEMMs and XLA:CPU's library dots read them from memory.
  'minimal': the outputs of the weight matmuls plus the layer input. 'full': the layer input.
  With remat, the layer being recomputed holds its 'none' set once more. Once per stack: the
  final norm, the attention mask and relative-position bias. Once per model: two float32
  [batch, length, vocab] arrays, the logits and their gradient (one on TPU, where the gradient
  is fused into the output layer's backward matmuls). Each array is divided by the
  mesh axes its logical names map to (batch over data; heads, mlp, vocab over model under 2-D
  rules). `batch` is the (micro)batch that one forward pass sees.

  Calibrated on XLA:TPU (v5p) and XLA:GPU (H100) compiles of T5.1.1 small, base and XL shapes
  under fsdp and 2d (bench/results/aot_targets.md); tests/test_plan.py holds it on small configs.
  """
  layout = _Layout(rules, mesh_shape)
  bytes_of = lambda items: sum(layout.per_device(n, s, i) for n, s, i in items)
  tpu = platform == 'tpu'
  total, recomputed = 0.0, 0.0
  stacks = _stacks(cfg, lengths)
  for num_layers, length, cross in stacks:
    if not num_layers:
      continue
    total += num_layers * bytes_of(_layer_residuals(cfg, batch, length, cross, policy, tpu))
    if policy != 'none':
      recomputed = max(recomputed,
                       bytes_of(_layer_residuals(cfg, batch, length, cross, 'none', tpu)))
    total += bytes_of(_norm_residuals(cfg, batch, length)
                      + [(('batch', None, None, None), (batch, 1, length, cross or length), 1),
                         ((None, 'heads', None, None), (1, cfg.num_heads, length, length), 4)])
  logits = layout.per_device(('batch', 'length', 'vocab'),
                             (batch, stacks[-1][1], cfg.vocab_size), 4)
  return total + recomputed + (1 if tpu else 2) * logits


# ----------------------------------------------------------------------------- roofline


def _attention_einsum_flops(cfg: T5Config, lengths: Mapping[str, int]) -> float:
  """Forward FLOPs per example of the batched score and value einsums (what 'minimal' redoes)."""
  i = cfg.num_heads * cfg.d_kv
  flops = 0.0
  for num_layers, length, cross in _stacks(cfg, lengths):
    per_layer = 2 * length * length * i * 2 + (2 * length * cross * i * 2 if cross else 0)
    flops += num_layers * per_layer
  return flops


def _axis_bandwidths(mesh_shape: Mapping[str, int], chip: hardware.Chip, nodes: int,
                     chip_name: str) -> dict[str, float]:
  """Bytes/s per device for a collective over each mesh axis.

  Devices fill the mesh in order with the last axis fastest (partitioning.create_mesh) and a
  node's devices are consecutive, so an axis whose span (its size × the sizes after it) exceeds
  one node's devices crosses nodes and runs at the inter-node (DCN / NIC) bandwidth.
  """
  num_devices = math.prod(mesh_shape.values())
  per_node = num_devices // nodes
  out, stride = {}, 1
  for axis in reversed(list(mesh_shape)):
    span = stride * mesh_shape[axis]
    stride = span
    if span <= per_node or mesh_shape[axis] == 1:
      out[axis] = chip.ici_bandwidth
    elif chip.dcn_bandwidth is None:
      raise ValueError(f'mesh axis {axis!r} spans {nodes} nodes but {chip_name} has no published '
                       'inter-node bandwidth in hardware.CHIPS; plan for one slice (--nodes=1).')
    else:
      out[axis] = chip.dcn_bandwidth
  return out


def _collective_s(kind: str, nbytes: float, axes: Sequence[str], mesh_shape, bandwidth) -> float:
  """Ring time of one collective over `axes`; `nbytes` is the unsharded buffer per device."""
  n = math.prod(mesh_shape[a] for a in axes)
  if n <= 1:
    return 0.0
  hops = (n - 1) / n * (2 if kind == 'all_reduce' else 1)
  return hops * nbytes / min(bandwidth[a] for a in axes)


def roofline(cfg: T5Config, lengths: Mapping[str, int], batch: int, rules,
             mesh_shape: Mapping[str, int], abstract_params, param_axes, opt_bytes: float,
             chip: hardware.Chip, chip_name: str, nodes: int, policy: str,
             num_microbatches: int = 1) -> dict:
  """Step time from compute, HBM and communication, each at the chip's peak.

  * compute: model FLOPs plus recomputation ('full' redoes the forward pass, 4/3 of the work;
    'minimal' redoes the attention score and value einsums) over the devices that split the
    work (mesh axes that shard batch, heads or mlp; an unused axis replicates the work).
  * HBM: weight and optimizer traffic (params read in the forward, backward and recompute
    passes, gradients written, optimizer reads and writes); activation traffic is taken to
    hide behind the matmuls.
  * overlapped communication: FSDP all-gathers of params sharded over a batch axis (forward,
    backward, and again for 'full' recompute), their gradients' reduce-scatter, and the all-reduce
    of gradients over batch axes that do not shard them (data parallel).
  * exposed communication: 2-D tensor-parallel all-reduces of activations [batch, length,
    d_model] over the axes that shard heads/mlp/vocab (one per sublayer forward and backward,
    another for cross-attention keys/values in the backward, the embedding lookups and logits).

  Overlap assumption: compute, HBM traffic and the FSDP/data-parallel collectives overlap
  perfectly (XLA's async collectives, latency-hiding scheduler), while tensor-parallel
  all-reduces sit between dependent matmuls and add to the step:
  step = max(compute, HBM, overlapped comm) + exposed comm. Latencies are ignored, so small
  messages are optimistic. MFU = model FLOPs / (step × devices × peak).
  """
  layout = _Layout(rules, mesh_shape)
  bandwidth = _axis_bandwidths(mesh_shape, chip, nodes, chip_name)
  num_devices = math.prod(mesh_shape.values())
  batch_axes = _batch_axes(layout)
  gathers = 3 if policy == 'full' else 2
  # Parameters: FSDP gathers and gradient reductions, and HBM traffic.
  gather_s = grad_s = 0.0
  gathered_total = shard_total = 0.0
  for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_params)[0]:
    names = param_axes[partitioning.path_key(path)]
    axes = layout.axes(names)
    fsdp = tuple(a for a in axes if a in batch_axes)
    data = tuple(a for a in batch_axes if a not in axes)
    shard = layout.per_device(names, leaf.shape, leaf.dtype.itemsize)
    gathered = layout.per_device(names, leaf.shape, leaf.dtype.itemsize, drop=fsdp)
    gathered_total += gathered
    shard_total += shard
    gather_s += gathers * num_microbatches * _collective_s(
        'all_gather', gathered, fsdp, mesh_shape, bandwidth)
    grad_s += (_collective_s('reduce_scatter', gathered, fsdp, mesh_shape, bandwidth)
               + _collective_s('all_reduce', shard, data, mesh_shape, bandwidth))
  hbm_bytes = (gathered_total * (gathers + 1) * num_microbatches
               + 3 * shard_total + 2 * opt_bytes)
  tp_s = num_microbatches * _tensor_parallel_s(
      cfg, lengths, layout, batch_axes, batch // num_microbatches, policy,
      lambda nbytes, axes: _collective_s('all_reduce', nbytes, axes, mesh_shape, bandwidth))
  # Compute.
  model_flops = models.training_flops_per_example(cfg, lengths) * batch
  recompute = {'none': 0.0, 'minimal': _attention_einsum_flops(cfg, lengths) * batch,
               'full': models.forward_flops_per_example(cfg, lengths) * batch}[policy]
  work_axes = (set(batch_axes) | set(_tp_axes(layout, HEADS, batch_axes))
               | set(_tp_axes(layout, HIDDEN, batch_axes)))
  compute_s = (model_flops + recompute) / (layout.size(tuple(work_axes)) * chip.peak_flops)
  hbm_s = hbm_bytes / chip.hbm_bandwidth
  overlapped = gather_s + grad_s
  step_s = max(compute_s, hbm_s, overlapped) + tp_s
  return {
      'compute_s': compute_s,
      'hbm_s': hbm_s,
      'fsdp_gather_s': gather_s,
      'gradient_sync_s': grad_s,
      'overlapped_comm_s': overlapped,
      'tensor_parallel_s': tp_s,
      'step_s': step_s,
      'mfu': model_flops / (step_s * num_devices * chip.peak_flops),
  }


def _tp_axes(layout: '_Layout', names, batch_axes) -> tuple:
  """The mesh axes that shard `names` other than the batch's: tensor parallelism."""
  return tuple(a for a in layout.axes(names) if a not in batch_axes)


def _tensor_parallel_s(cfg: T5Config, lengths: Mapping[str, int], layout: '_Layout', batch_axes,
                       micro: int, policy: str, all_reduce_s: Callable[[float, tuple], float]):
  """Seconds of 2-D tensor-parallel all-reduces of activations [micro, length, d_model] in one
  microbatch: one per sublayer forward (twice under 'full' remat) and backward, another for
  cross-attention keys/values in the backward, the embedding lookups and the logits."""
  act = lambda length: layout.per_device(ACT, (micro, length, cfg.d_model),
                                         cfg.compute_dtype.itemsize)
  heads, mlp = _tp_axes(layout, HEADS, batch_axes), _tp_axes(layout, HIDDEN, batch_axes)
  vocab = _tp_axes(layout, ('batch', 'length', 'vocab'), batch_axes)
  passes = (2 if policy == 'full' else 1) + 1
  total = 0.0
  for num_layers, length, cross in _stacks(cfg, lengths):
    per_layer = passes * (all_reduce_s(act(length), heads) + all_reduce_s(act(length), mlp))
    if cross:
      per_layer += passes * all_reduce_s(act(length), heads) + all_reduce_s(act(cross), heads)
    total += num_layers * per_layer + all_reduce_s(act(length), vocab)  # the embedding lookup
  return total + all_reduce_s(act(_stacks(cfg, lengths)[-1][1]), vocab)  # the logits' gradient


# ----------------------------------------------------------------------------- the plan


def plan(model_config: T5Config, mesh_shape: Mapping[str, int], num_devices: int,
         task_feature_lengths: Mapping[str, int], rules, *, batch_size: int = 128,
         chip: str | None = None, nodes: int | None = None, num_microbatches: int = 1) -> dict:
  """The planner's figures as a dict (also used by tests).

  Memory figures are bytes per device. `*_by_remat` entries map each remat policy to its value;
  `remat_policy` is the one the config asks for. With `chip`, the dict also says whether each
  policy fits (total ≤ (1 - HBM_HEADROOM) × HBM) and gives the roofline per policy. `nodes`
  (default: as few as the chip's slice/node size allows) decides which mesh axes cross nodes.
  """
  shape = partitioning.resolve_mesh_shape(mesh_shape, num_devices)
  layout = _Layout(rules, shape)
  tx = optimizer.make_optimizer(optimizer.learning_rate_schedule())
  _, abstract_params, param_axes = _abstract_params_and_axes(model_config)
  abstract_opt = jax.eval_shape(optimizer.as_matrices(tx, param_axes).init, abstract_params)

  def per_device_bytes(tree, names_fn):
    return sum(layout.per_device(names_fn(path, leaf), leaf.shape, leaf.dtype.itemsize)
               for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0])

  params_bytes = per_device_bytes(
      abstract_params, lambda path, _: param_axes[partitioning.path_key(path)])
  opt_bytes = per_device_bytes(abstract_opt, optimizer.state_axes(param_axes, abstract_params))
  n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(abstract_params))

  batch_shards = layout.size(_batch_axes(layout))
  if batch_size % num_microbatches or (batch_size // num_microbatches) % batch_shards:
    raise ValueError(
        f'batch_size {batch_size} in {num_microbatches} microbatch(es) does not split over the '
        f'{batch_shards} devices that shard the batch (mesh {shape}); choose a batch size that '
        f'is a multiple of {batch_shards * num_microbatches}.')
  micro = batch_size // num_microbatches
  platform = 'tpu' if (chip or '').startswith('tpu') else 'gpu'
  activations = {p: activation_bytes(model_config, task_feature_lengths, micro, rules, shape, p,
                                     platform)
                 for p in REMAT_POLICIES}
  workspace = _fsdp_gather_buffer(abstract_params, param_axes, layout, platform != 'tpu')
  per_example = models.training_flops_per_example(model_config, task_feature_lengths)
  tokens = sum(task_feature_lengths.values())
  fixed = 2 * params_bytes + opt_bytes + workspace  # params, gradients, optimizer, gather buffer
  out = {
      'params': n_params,
      'mesh': shape,
      'batch_size': batch_size,
      'examples_per_batch_shard': micro / batch_shards,
      'remat_policy': model_config.remat_policy,
      'training_flops_per_example': per_example,
      'training_flops_per_token': per_example / tokens,
      'training_flops_per_target_token': per_example / task_feature_lengths['targets'],
      'training_flops_per_step': per_example * batch_size,
      'params_bytes_per_device': params_bytes,
      'gradient_bytes_per_device': params_bytes,
      'optimizer_bytes_per_device': opt_bytes,
      'fsdp_gather_bytes_per_device': workspace,
      'activation_bytes_by_remat': activations,
      'total_bytes_by_remat': {p: fixed + a for p, a in activations.items()},
  }
  if chip is not None:
    spec = hardware.get_chip(chip)
    nodes = nodes or -(-num_devices // spec.devices_per_node)
    if num_devices % nodes or num_devices // nodes > spec.devices_per_node:
      raise ValueError(f'{num_devices} devices do not split into {nodes} node(s) of at most '
                       f'{spec.devices_per_node} {chip} devices; adjust --nodes.')
    usable = (1 - HBM_HEADROOM) * spec.hbm_bytes
    out.update({
        'chip': chip,
        'nodes': nodes,
        'hbm_bytes': spec.hbm_bytes,
        'usable_hbm_bytes': usable,
        'fits_by_remat': {p: t <= usable for p, t in out['total_bytes_by_remat'].items()},
        'roofline_by_remat': {
            p: roofline(model_config, task_feature_lengths, batch_size, rules, shape,
                        abstract_params, param_axes, opt_bytes, spec, chip, nodes, p,
                        num_microbatches)
            for p in REMAT_POLICIES},
    })
  return out


# Shapes and names only; cached because a config is often planned under several meshes.
_abstract_params_and_axes = functools.lru_cache(maxsize=8)(trainer.abstract_params_and_axes)


def _fsdp_gather_buffer(abstract_params, param_axes, layout: _Layout, every_layer: bool) -> float:
  """Gathered copies of params sharded over a batch axis (FSDP); zero otherwise.

  XLA:TPU gathers each layer again for the backward pass, so two gathered layers are live (the
  one in use and the next, prefetched). XLA:GPU keeps the forward's gathered weights for the
  backward (`every_layer`): XL on 32 H100s compiled to 0.42 GiB more per layer pair than its
  activations, the size of that pair's gathered weights."""
  batch_axes = _batch_axes(layout)
  groups: dict[tuple, float] = {}
  sharded = False
  for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_params)[0]:
    key = partitioning.path_key(path)
    names = param_axes[key]
    fsdp = tuple(a for a in layout.axes(names) if a in batch_axes)
    sharded |= bool(fsdp)
    group = key[:3] if 'layers' in key else key[:1]
    groups[group] = groups.get(group, 0.0) + layout.per_device(
        names, leaf.shape, leaf.dtype.itemsize, drop=fsdp)
  if not sharded:
    return 0.0
  return sum(groups.values()) if every_layer else 2 * max(groups.values())


# ----------------------------------------------------------------------------- ahead of time


def _check_visible_devices(num_devices: int) -> list:
  devices = jax.devices()
  if len(devices) < num_devices:
    raise gin_utils.UsageError(
        f'--aot compiles for {num_devices} devices but JAX sees {len(devices)} '
        f'({devices[0].platform}); on CPU, set XLA_FLAGS=--xla_force_host_platform_device_count='
        f'{num_devices} before starting Python, pass --num_devices={len(devices)}, or compile '
        'for hardware you do not have with --target (e.g. --target=v5p-64).')
  return devices


def compiled_figures(p: dict, compiled: dict, config: T5Config, preset: str, num_devices: int,
                     target: str | None) -> dict:
  """The compiled program's figures beside the analytic plan's, as `--json` prints them."""
  hbm = p.get('hbm_bytes')
  flops_per_step = p['training_flops_per_step']
  coll = compiled['collectives']
  moved = sum(c['bytes'] for c in coll.values())
  minimum = aot.minimum_collective_bytes(preset, compiled['compute_params_bytes'])
  optimal = compiled['optimal_seconds']
  peak = hardware.CHIPS[p['chip']].peak_flops if 'chip' in p else None
  # XLA's cost analysis counts a loop body once: a scanned stack's FLOPs and time are one layer's.
  looped = any(n > 1 for n in compiled['loop_trip_counts'])
  return {
      'target': target,
      'platform': compiled['platform'],
      'device_kind': compiled['device_kind'],
      'num_chips': num_devices,
      'mesh': p['mesh'],
      'preset': preset,
      'remat_policy': config.remat_policy,
      'dtype': config.dtype,
      'batch_size': p['batch_size'],
      'memory_per_chip_bytes': compiled['memory_per_chip_bytes'],
      **{k: compiled[k] for k in ('argument_bytes', 'output_bytes', 'alias_bytes', 'temp_bytes')},
      'hbm_bytes': hbm,
      'fits': None if hbm is None else compiled['memory_per_chip_bytes'] <= hbm,
      'hbm_free_fraction': None if hbm is None else 1 - compiled['memory_per_chip_bytes'] / hbm,
      'estimated_memory_per_chip_bytes': p['total_bytes_by_remat'][config.remat_policy],
      'compile_s': compiled['compile_s'],
      'compiled_flops_per_chip': compiled['flops'],
      'model_flops_per_step': flops_per_step,
      'model_flops_per_chip': flops_per_step / num_devices,
      'while_loops': compiled['while_loops'],
      'loop_trip_counts': compiled['loop_trip_counts'],
      'collectives': coll,
      'collective_bytes_per_step': moved,
      'collective_bytes_minimum': minimum,
      'collective_bytes_ratio': moved / minimum if minimum else None,
      'optimal_seconds': optimal,
      'mfu_estimate': (flops_per_step / num_devices / peak / optimal
                       if optimal and peak and not looped else None),
      'fused_attention': compiled['fused_attention'] if compiled['platform'] != 'tpu' else None,
  }


def _print_compiled(c: dict) -> None:
  where = c['target'] or f"this host's {c['platform']} devices"
  print(f"\nCompiled for {where}: {c['num_chips']} × {c['device_kind']}, mesh {c['mesh']}, "
        f"rules {c['preset']}, remat={c['remat_policy']}, {c['dtype']}; "
        f"compile {c['compile_s']:.1f} s")
  memory = f"  memory per chip {_gib(c['memory_per_chip_bytes'])} (arguments + outputs - aliased + temp)"
  if c['hbm_bytes']:
    memory += (f" of {_gib(c['hbm_bytes'])} HBM: {'fits' if c['fits'] else 'DOES NOT FIT'}, "
               f"{c['hbm_free_fraction']:.0%} free")
  print(memory + f"; planner estimate {_gib(c['estimated_memory_per_chip_bytes'])} "
        f"(ratio {c['estimated_memory_per_chip_bytes'] / c['memory_per_chip_bytes']:.2f})")
  if c['compiled_flops_per_chip'] is not None:
    print(f"  compiled FLOPs per chip {c['compiled_flops_per_chip']:.4g} vs model FLOPs per chip "
          f"{c['model_flops_per_chip']:.4g} (ratio "
          f"{c['compiled_flops_per_chip'] / c['model_flops_per_chip']:.2f}; XLA counts each of the "
          f"{c['while_loops']} while-loop bodies once, and elementwise work and recomputation)")
  else:
    print('  compiled FLOPs: not reported by this compiler (XLA:GPU has no cost analysis)')
  for kind, v in c['collectives'].items():
    if v['count']:
      print(f"  {kind}: {v['count']} ops, {_gib(v['bytes'])} per step")
  ratio = c['collective_bytes_ratio']
  print(f"  collectives {_gib(c['collective_bytes_per_step'])} per step" + (
      f"; the {c['preset']} minimum is {_gib(c['collective_bytes_minimum'])} (ratio {ratio:.2f})"
      if ratio is not None else f" (no minimum modelled for {c['preset']})"))
  if c['optimal_seconds'] is not None and any(n > 1 for n in c['loop_trip_counts']):
    print(f"  XLA:TPU's estimate (optimal_seconds) counts each scanned layer once "
          f"(loops of {c['loop_trip_counts']}): no MFU from it; for one, compile the unrolled "
          f"model (--gin.t5x_lite.models.T5Config.scan_layers=False, or bench/aot_targets.py "
          f"--depth=2,4)")
  elif c['optimal_seconds'] is not None:
    mfu = f", MFU {c['mfu_estimate']:.1%}" if c['mfu_estimate'] is not None else ''
    print(f"  XLA:TPU's estimate (optimal_seconds, a serial per-op sum): "
          f"{c['optimal_seconds'] * 1e3:,.1f} ms per step{mfu}")
  if c['fused_attention'] is not None:
    print(f"  fused attention kernel (cuDNN) in the program: {'yes' if c['fused_attention'] else 'no'}")


# ----------------------------------------------------------------------------- command line


def _gib(n: float) -> str:
  return f'{n / 2**30:,.3f} GiB'


def _macro_or(name, default):
  try:
    return gin_utils.query_macro(name)
  except gin_utils.UsageError:
    return default


def _bound(name: str):
  try:
    return gin.query_parameter(name)
  except ValueError:
    return None


def _table(rows: list[tuple[str, Sequence[str]]], header: Sequence[str]) -> str:
  width = max(len(r[0]) for r in rows) + 2
  lines = [' ' * width + ''.join(f'{h:>12}' for h in header)]
  lines += [f'{label:<{width}}' + ''.join(f'{v:>12}' for v in values) for label, values in rows]
  return '\n'.join(lines)


def _print_plan(p: dict, lengths, preset: str, num_devices: int, dtype: str) -> None:
  gib = lambda n: f'{n / 2**30:,.2f}'
  ms = lambda s: f'{s * 1e3:,.1f}'
  where = f"{num_devices} × {p['chip']}, {p['nodes']} node(s)" if 'chip' in p else (
      f'{num_devices} devices')
  print(f"params: {p['params']:,}")
  print(f"mesh: {p['mesh']} ({where}), rules: {preset}")
  print(f"batch: {p['batch_size']} ({p['examples_per_batch_shard']:g} per batch shard), "
        f"lengths: {dict(lengths)}")
  print(f"training FLOPs per token: {p['training_flops_per_token']:.4g} "
        f"(per example {p['training_flops_per_example']:.4g}, per target token "
        f"{p['training_flops_per_target_token']:.4g}, per step "
        f"{p['training_flops_per_step']:.4g})")
  print(f"params per device: {_gib(p['params_bytes_per_device'])}")
  print(f"gradients per device: {_gib(p['gradient_bytes_per_device'])}")
  print(f"optimizer state per device: {_gib(p['optimizer_bytes_per_device'])}")
  print(f"params + optimizer per device: "
        f"{_gib(p['params_bytes_per_device'] + p['optimizer_bytes_per_device'])}")
  if p['fsdp_gather_bytes_per_device']:
    print(f"FSDP gathered params: {_gib(p['fsdp_gather_bytes_per_device'])}")
  policies = REMAT_POLICIES
  rows = [('activations (GiB)', [gib(p['activation_bytes_by_remat'][r]) for r in policies]),
          ('total per device (GiB)', [gib(p['total_bytes_by_remat'][r]) for r in policies])]
  if 'chip' in p:
    roof = p['roofline_by_remat']
    rows += [
        (f"fits {gib(p['usable_hbm_bytes'])} of {gib(p['hbm_bytes'])} GiB",
         ['yes' if p['fits_by_remat'][r] else 'NO' for r in policies]),
        ('compute (ms)', [ms(roof[r]['compute_s']) for r in policies]),
        ('HBM weights+optimizer (ms)', [ms(roof[r]['hbm_s']) for r in policies]),
        ('FSDP/DP collectives (ms)', [ms(roof[r]['overlapped_comm_s']) for r in policies]),
        ('tensor-parallel (ms)', [ms(roof[r]['tensor_parallel_s']) for r in policies]),
        ('step time (ms)', [ms(roof[r]['step_s']) for r in policies]),
        ('MFU', [f"{roof[r]['mfu']:.1%}" for r in policies]),
    ]
  print()
  print(_table(rows, [f'remat={r}' if r == p['remat_policy'] else r for r in policies]))
  if 'chip' not in p:
    print(f"(pass --chip=NAME for fits, step time and MFU; chips: "
          f"{', '.join(sorted(hardware.CHIPS))})")
    return
  print(f"(fits: {HBM_HEADROOM:.0%} of HBM kept free; step = max(compute, HBM, FSDP/DP "
        "collectives) + tensor-parallel all-reduces, a roofline bound: no latency, elementwise "
        "work or imperfect overlap)")
  if dtype != 'bfloat16':
    print(f"note: the model computes in {dtype} but the roofline uses the bf16 peak; for bf16 "
          "activations add --gin.t5x_lite.models.T5Config.dtype=\"'bfloat16'\"")


def main(argv=None) -> int:
  def run(rest):
    args = cli.parser('plan').parse_args(rest)
    for flag in ('num_devices', 'batch_size', 'nodes'):
      value = getattr(args, flag)
      if value is not None and value < 1:
        raise gin_utils.UsageError(f'--{flag}={value}: must be 1 or more (leave it out for the '
                                   'default).')
    target = targets.parse(args.target) if args.target else None
    if target:
      if args.chip not in (None, target.chip):
        raise gin_utils.UsageError(f'--chip {args.chip} contradicts --target {target.name} '
                                   f'({target.chip}); drop --chip.')
      if args.num_devices not in (None, target.num_chips):
        raise gin_utils.UsageError(f'--num_devices {args.num_devices} contradicts --target '
                                   f'{target.name} ({target.num_chips} chips); drop --num_devices.')
      args.chip, args.num_devices = target.chip, target.num_chips
      args.nodes = args.nodes or target.num_slices
    if args.chip is not None and args.chip not in hardware.CHIPS:
      raise gin_utils.UsageError(f'unknown --chip {args.chip!r}; choose one of '
                                 f'{", ".join(sorted(hardware.CHIPS))}.')
    config = gin_utils.query_macro('MODEL_CONFIG')
    if args.mesh is not None:
      try:
        mesh_shape = ast.literal_eval(args.mesh)
        assert isinstance(mesh_shape, dict)
      except (ValueError, SyntaxError, AssertionError) as e:
        raise gin_utils.UsageError(f"--mesh must be a dict like \"{{'data': 8, 'model': 8}}\", "
                                   f'got {args.mesh!r}.') from e
    else:
      mesh_shape = _macro_or('MESH_SHAPE', {'data': -1, 'model': 1})
    default_lengths = {'encoder_decoder': {'inputs': 512, 'targets': 114},
                       'prefix_lm': {'inputs': 1024, 'targets': 1024}}.get(
                           config.architecture, {'targets': 2048})
    lengths = _macro_or('TASK_FEATURE_LENGTHS', default_lengths)
    batch_size = args.batch_size or _macro_or('BATCH_SIZE', 128)
    num_devices = args.num_devices or jax.device_count()
    # Fail before planning, and look the devices up once.
    host_devices = _check_visible_devices(num_devices) if args.aot and not target else None
    chip = args.chip or hardware.chip_for_device(jax.devices()[0])
    preset = args.preset or _bound('logical_axis_rules.preset') or '2d'
    microbatches = _bound('make_train_step.num_microbatches') or 1
    try:
      rules = partitioning.logical_axis_rules(preset=preset)
      partitioning.check_mesh_axes(mesh_shape, rules)
      p = plan(config, mesh_shape, num_devices, lengths, rules, batch_size=batch_size,
               chip=chip, nodes=args.nodes, num_microbatches=microbatches)
    except ValueError as e:
      raise gin_utils.UsageError(str(e)) from e
    _print_plan(p, lengths, preset, num_devices, config.dtype)
    if not (args.aot or target):
      if args.json:
        print(json.dumps(p, default=str))
      return 0
    devices = targets.devices(target) if target else host_devices[:num_devices]
    compiled = aot.compile_train_step(config, devices, p['mesh'], lengths, rules, batch_size)
    figures = compiled_figures(p, compiled, config, preset, num_devices,
                               target.name if target else None)
    _print_compiled(figures)
    if args.json:
      print(json.dumps(figures))
    return 0
  return gin_utils.run_main(run, argv)
