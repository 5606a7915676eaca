"""Reading the compiled program: collectives and their bytes from HLO text, written out by hand."""

import pytest

from t5x_lite import aot

# One line per form XLA prints: a GPU async all-gather returning (operands, results), a GPU async
# reduce-scatter likewise, a plain reduce-scatter with mesh replica groups, XLA:TPU's
# reduce-scatter written as an all-reduce inside an all-reduce-scatter computation, and a plain
# all-reduce with iota groups.
HLO = '''
%all-reduce-scatter.3 (input: f32[128,4,32]) -> f32[32,4,32] {
  %input = f32[128,4,32]{2,1,0} parameter(0)
  %all-reduce.1 = f32[128,4,32]{2,1,0:T(8,128)} all-reduce(%input), channel_id=1, replica_groups={{0,1,2,3}}, to_apply=%add
}

ENTRY %main (p: f32[16,128]) -> f32[] {
  %all-gather-start = ((f32[16,128]{1,0}, f32[16]{0}), (f32[128,128]{1,0}, f32[128]{0})) all-gather-start(%a, %b), channel_id=2, replica_groups=mesh['axis_0'=8] {'axis_0'}, dimensions={0}
  %all-gather-done = (f32[128,128]{1,0}, f32[128]{0}) all-gather-done(%all-gather-start)
  %reduce-scatter-start = ((f32[128,384]{1,0}), (f32[16,384]{1,0})) reduce-scatter-start(%g), channel_id=3, replica_groups=mesh['axis_0'=8] {'axis_0'}, dimensions={0}
  %reduce-scatter.2 = bf16[4,64]{1,0} reduce-scatter(%h), channel_id=4, replica_groups=mesh['axis_0'=4,'axis_1'=2] {'axis_0'}, dimensions={0}
  ROOT %all-reduce.7 = f32[1000]{0} all-reduce(%x), channel_id=5, replica_groups=[2,4]<=[8], to_apply=%add
}
'''


def test_collectives_are_counted_with_the_whole_buffer_each_moves():
  got = aot.collectives(HLO)
  assert got['all-gather'] == {'count': 1, 'bytes': 4 * (128 * 128 + 128)}
  # async (operands first) + plain (shard × group of 4) + TPU's all-reduce-scatter
  assert got['reduce-scatter'] == {'count': 3,
                                   'bytes': 4 * 128 * 384 + 2 * 4 * 64 * 4 + 4 * 128 * 4 * 32}
  assert got['all-reduce'] == {'count': 1, 'bytes': 4 * 1000}
  assert got['all-to-all']['count'] == 0 and got['collective-permute']['count'] == 0


# A scanned stack as XLA:TPU prints it (the bound only in the condition) and as XLA:GPU does
# (known_trip_count), each with a per-layer all-gather, one of them inside a fusion's call; and
# XLA:TPU's windowed einsum, unrolled twice: `i < 16` with the counter growing by 2 is 8 trips.
LOOPS = '''
%cond.3 (p: (bf16[1,64], u32[])) -> pred[] {
  %p = (bf16[1,64], u32[]) parameter(0)
  %constant.16 = u32[]{:T(128)} constant(16)
  %gte.3 = u32[]{:T(128)} get-tuple-element(%p), index=1
  ROOT %compare.3 = pred[]{:T(512)} compare(%gte.3, %constant.16), direction=LT
}

%windowed_dot_general_body_ag.3 (p: (bf16[1,64], u32[])) -> (bf16[1,64], u32[]) {
  %p = (bf16[1,64], u32[]) parameter(0)
  %counter = u32[]{:T(128)} get-tuple-element(%p), index=1
  %constant.1 = u32[]{:T(128)} constant(1)
  %constant.2 = u32[]{:T(128)} constant(2)
  %shard.1 = u32[]{:T(128)} add(%counter, %constant.1)
  %collective-permute-start.3 = (bf16[1,64]{1,0}, bf16[1,64]{1,0}, u32[]{:S(2)}, u32[]{:S(2)}) collective-permute-start(%w), channel_id=5, source_target_pairs={{0,1},{1,0}}
  %next = u32[]{:T(128)} add(%counter, %constant.2), metadata={op_name="jit(step)/while"}
  ROOT %tuple.3 = (bf16[1,64], /*index=1*/u32[]) tuple(%collective-permute-done.3, /*index=1*/%next)
}

%cond.1 (p: (s32[], f32[8])) -> pred[] {
  %constant.5 = s32[]{:T(128)} constant(24)
  %gte = s32[]{:T(128)} get-tuple-element(%p), index=0
  ROOT %lt.1 = pred[]{:T(512)} compare(%gte, %constant.5), direction=LT
}

%gather_in_fusion (a: f32[4]) -> f32[32] {
  ROOT %all-gather.9 = f32[32]{0} all-gather(%a), channel_id=7, replica_groups=[1,8]<=[8], dimensions={0}
}

%body.1 (p: (s32[], f32[8])) -> (s32[], f32[8]) {
  %all-gather.1 = f32[64]{0} all-gather(%x), channel_id=1, replica_groups=[1,8]<=[8], dimensions={0}
  %f = f32[32]{0} fusion(%y), kind=kCustom, calls=%gather_in_fusion
}

%body.2 (p: (s32[], f32[8])) -> (s32[], f32[8]) {
  %all-gather.2 = f32[16]{0} all-gather(%x), channel_id=2, replica_groups=[1,8]<=[8], dimensions={0}
  %collective-permute-start.1 = (bf16[1,64]{1,0:T(8,128)(2,1)}, bf16[1,64]{1,0:T(8,128)(2,1)}, u32[]{:S(2)}, u32[]{:S(2)}) collective-permute-start(%w), channel_id=4, source_target_pairs={{0,1},{1,0}}
}

ENTRY %main (p: f32[8]) -> f32[8] {
  %while.1 = (s32[], f32[8]) while(%t), condition=%cond.1, body=%body.1
  %while.2 = (s32[], f32[8]) while(%t), condition=%cond.2, body=%body.2, backend_config={"known_trip_count":{"n":"3"}}
  %while.3 = (bf16[1,64], u32[]) while(%t3), condition=%cond.3, body=%windowed_dot_general_body_ag.3
  ROOT %all-reduce.3 = f32[8]{0} all-reduce(%x), channel_id=3, replica_groups=[1,8]<=[8], to_apply=%add
}
'''


def test_collectives_in_a_scanned_loop_count_once_per_iteration():
  assert aot.loop_trip_counts(LOOPS) == [24, 3]  # XLA's windowed einsum is not the model's loop
  assert aot.executions(LOOPS)['windowed_dot_general_body_ag.3'] == 8
  assert aot.executions(LOOPS)['gather_in_fusion'] == 24
  got = aot.collectives(LOOPS)
  assert got['all-gather'] == {'count': 24 + 24 + 3, 'bytes': 4 * (24 * (64 + 32) + 3 * 16)}
  assert got['all-reduce'] == {'count': 1, 'bytes': 4 * 8}
  # one bf16[1,64] each
  assert got['collective-permute'] == {'count': 3 + 8, 'bytes': (3 + 8) * 2 * 64}


def test_replica_group_sizes_in_each_notation():
  assert aot._group_size("replica_groups=mesh['axis_0'=4,'axis_1'=2] {'axis_1'}, x") == 2
  assert aot._group_size("replica_groups=mesh['a'=4,'b'=2] {'a','b'}") == 8
  assert aot._group_size('replica_groups={{0,1,2},{3,4,5}}, x') == 3
  assert aot._group_size('replica_groups=[2,4]<=[8], x') == 4


def test_fsdp_reference_volume_is_two_gathers_and_one_reduce_scatter():
  assert aot.minimum_collective_bytes('fsdp', 200) == 3 * 200
  assert aot.minimum_collective_bytes('data_parallel', 200) == 200
  assert aot.minimum_collective_bytes('2d', 200) is None


@pytest.mark.slow
@pytest.mark.parametrize('dtype,fused', [('bfloat16', True), ('float32', False)])
def test_the_gpu_step_runs_attention_in_cudnn_where_cudnn_takes_it(dtype, fused):
  """XLA:GPU's program for an H100 node: with kernels='auto', bfloat16 attention (forward and
  backward) is cuDNN's fused kernel; float32, which cuDNN does not take, stays XLA's."""
  from t5x_lite import partitioning, targets  # pylint: disable=import-outside-toplevel
  from t5x_lite.models import T5Config  # pylint: disable=import-outside-toplevel
  config = T5Config(vocab_size=128, d_model=64, num_heads=4, d_kv=16, d_ff=128,
                    num_encoder_layers=1, num_decoder_layers=1, relative_attention_num_buckets=8,
                    relative_attention_max_distance=16, dtype=dtype)
  compiled = aot.compile_train_step(
      config, targets.devices(targets.parse('h100x8')), {'data': 8},
      {'inputs': 64, 'targets': 32}, partitioning.logical_axis_rules(preset='fsdp'), 16)
  assert compiled['fused_attention'] is fused
  # Three attentions (encoder, decoder self, cross), each a forward and a backward kernel.
  assert compiled['cudnn_attention_calls'] == (6 if fused else 0)
