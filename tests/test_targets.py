"""--target names: Cloud TPU types and GPU clusters as libtpu / CUDA-plugin topologies.

The expected layouts are Cloud TPU's published slice shapes (as MaxText's accelerator table lists
them), an independent record of what each accelerator type is."""

import json
import types

import numpy as np
import pytest

from t5x_lite import gin_utils, hardware, partitioning, targets


@pytest.mark.parametrize('name, chips, topology, wrap', [
    ('v4-8', 4, 'v4:2x2x1', (False,) * 3),
    ('v4-128', 64, 'v4:4x4x4', (True,) * 3),
    ('v5p-8', 4, 'v5:2x2x1', (False,) * 3),
    ('v5p-16', 8, 'v5:2x2x2', (False,) * 3),
    ('v5p-32', 16, 'v5:2x2x4', (False,) * 3),
    ('v5p-64', 32, 'v5:2x4x4', (False,) * 3),
    ('v5p-256', 128, 'v5:4x4x8', (True,) * 3),
    ('v5p-1024', 512, 'v5:8x8x8', (True,) * 3),
    ('v5e-16', 16, 'v5e:4x4', (False, False, False)),
    ('v5litepod-32', 32, 'v5e:4x8', (False, False, False)),
    ('v5e-128', 128, 'v5e:8x16', (False, True, False)),
    ('v5e-256', 256, 'v5e:16x16', (True, True, False)),
    ('v6e-8', 8, 'v6e:2x4', (False, False, False)),
])
def test_tpu_types_have_cloud_tpus_slice_shapes(name, chips, topology, wrap):
  t = targets.parse(name)
  assert (t.platform, t.num_chips, t.num_slices, t.topology, t.wrap) == \
      ('tpu', chips, 1, topology, wrap)


def test_multislice_and_gpu_clusters():
  t = targets.parse('2xv5p-256')
  assert (t.num_chips, t.num_slices, t.topology, t.chip) == (256, 2, 'v5:4x4x8', 'tpu_v5p')
  g = targets.parse('h100x32')
  assert (g.platform, g.chip, g.num_chips, g.num_slices, g.topology) == \
      ('cuda', 'h100', 32, 4, '1x4x8')
  assert targets.parse('a100x4').topology == '1x1x4'


@pytest.mark.parametrize('name, needle', [
    ('v5p-12', 'v5p-12 is not a slice Cloud TPU offers (v5p counts TensorCores, two per chip'),
    ('v5p-9', 'is not a slice Cloud TPU offers'),
    ('v5e-512', 'up to 256'),
    ('v9-8', "is not a Cloud TPU type"),
    ('h100x12', '12 GPUs do not fill nodes of 8'),
    ('x100x8', "no GPU description for 'x100'"),
])
def test_bad_targets_say_what_exists(name, needle):
  with pytest.raises(gin_utils.UsageError, match=None) as raised:
    targets.parse(name)
  assert needle in str(raised.value)


@pytest.mark.parametrize('name, kind, count', [
    ('v5p-8', 'TPU v5', 4), ('v5e-16', 'TPU v5 lite', 16), ('v6e-8', 'TPU v6 lite', 8),
    ('h100x8', 'NVIDIA H100 80GB HBM3', 8), ('a100x8', 'NVIDIA A100-SXM4-80GB', 8),
])
def test_compile_only_devices_come_from_libtpu_and_the_cuda_plugin(name, kind, count):
  target = targets.parse(name)
  devices = targets.devices(target)
  assert len(devices) == count and {d.device_kind for d in devices} == {kind}
  # MFU divides by the chip's published peak, found from the device kind XLA reports.
  assert hardware.chip_for_device(devices[0]) == target.chip
  assert hardware.peak_flops_per_device(devices[0]) == hardware.CHIPS[target.chip].peak_flops


def test_an_accelerator_missing_from_the_table_has_no_mfu_rather_than_a_guess():
  unknown = types.SimpleNamespace(device_kind='Imaginary X9', platform='gpu')
  assert hardware.peak_flops_per_device(unknown) is None
  assert '--gin.peak_flops_per_device.peak_flops=' in hardware.unknown_peak_message(unknown)
  assert hardware.peak_flops_per_device(unknown, peak_flops=5e14) == 5e14


@pytest.mark.parametrize('kind, chip, peak', [
    ('TPU v4', 'tpu_v4', 275e12), ('TPU v5 lite', 'tpu_v5e', 197e12), ('TPU v5', 'tpu_v5p', 459e12),
    ('TPU v5p', 'tpu_v5p', 459e12), ('TPU v6 lite', 'tpu_v6e', 918e12),
    ('NVIDIA A100-SXM4-40GB', 'a100', 312e12), ('NVIDIA H100 80GB HBM3', 'h100', 989e12),
    ('NVIDIA H200', 'h200', 989e12), ('NVIDIA B200', 'b200', 2250e12),
])
def test_mfu_divides_by_the_published_bf16_peak_of_each_device_kind(kind, chip, peak):
  """Device kinds as the runtimes report them (libtpu calls v5p 'TPU v5', v6e 'TPU v6 lite')."""
  device = types.SimpleNamespace(device_kind=kind, platform='tpu' if 'TPU' in kind else 'gpu')
  assert hardware.chip_for_device(device) == chip
  assert hardware.peak_flops_per_device(device) == peak


@pytest.mark.parametrize('name, shape', [('v5p-64', {'data': 8, 'model': 4}),
                                         ('v5e-16', {'data': 4, 'model': 4})])
def test_mesh_axes_run_along_physical_neighbours(name, shape):
  """create_mesh orders libtpu's devices by their coordinates (mesh_utils): along 'model' each
  chip's successor is one ICI hop away, and each 'model' group is a compact block of the torus.
  Reshaping the device list in libtpu's order does not do this on these slices (2x2 blocks:
  every other step is two hops)."""
  devices = targets.devices(targets.parse(name))
  mesh = partitioning.create_mesh(shape, devices)
  hops = lambda a, b: int(np.abs(np.subtract(a.coords, b.coords)).sum())
  for group in mesh.devices:
    assert [hops(a, b) for a, b in zip(group[:-1], group[1:])] == [1] * (len(group) - 1)
    coords = np.array([d.coords for d in group])
    assert np.prod(coords.max(0) - coords.min(0) + 1) == len(group)
  naive = np.asarray(devices).reshape(tuple(shape.values()))
  assert any(hops(a, b) > 1 for group in naive for a, b in zip(group[:-1], group[1:]))


def test_a_multislice_mesh_puts_the_slices_on_the_replica_axis():
  """Two v5p-16 slices: 'replica' (hsdp's data-parallel axis over DCN) indexes the slice, so every
  other axis stays on one slice's ICI; without a 'replica' axis the first axis takes the slices."""
  devices = targets.devices(targets.parse('2xv5p-16'))
  mesh = partitioning.create_mesh({'replica': 2, 'data': -1, 'model': 1}, devices)
  assert [{d.slice_index for d in row.flat} for row in mesh.devices] == [{0}, {1}]
  mesh = partitioning.create_mesh({'data': 4, 'model': 4}, devices)
  assert [{d.slice_index for d in row} for row in mesh.devices] == [{0}, {0}, {1}, {1}]
  with pytest.raises(gin_utils.UsageError, match="span 2 slices"):
    partitioning.create_mesh({'data': 1, 'model': 16}, devices)


def test_the_cpu_peak_is_measured_once_per_machine_then_read_back(tmp_path, monkeypatch):
  """Every run's MFU line divides by a measured CPU matmul: measured on first use, then read
  from the cache dir (measuring again is the benchmarks' choice)."""
  monkeypatch.setenv('T5X_LITE_DATA_DIR', str(tmp_path))
  calls = []
  monkeypatch.setattr(hardware, 'measured_matmul_flops', lambda: calls.append(1) or 4e10 + len(calls))
  assert hardware.cpu_matmul_flops() == 4e10 + 1
  assert hardware.cpu_matmul_flops() == 4e10 + 1 and len(calls) == 1
  assert list(json.loads((tmp_path / 'cpu_peak_flops.json').read_text()).values()) == [4e10 + 1]
  assert hardware.cpu_matmul_flops(remeasure=True) == 4e10 + 2  # a benchmark measures afresh
  assert hardware.cpu_matmul_flops() == 4e10 + 2 and len(calls) == 2
