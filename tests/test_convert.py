"""HF T5 interop: converted models score as transformers does, and HF -> ours -> HF is lossless.

The reference is transformers itself on small randomly initialised models (no downloads): one
T5 v1.0-style (ReLU, tied and scaled head) and one T5.1.1-style (gated-GELU, separate head).
"""

import json
import os
import shutil

import gin
import jax
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from safetensors.numpy import load_file, save_file

from t5x_lite import checkpoints, convert, infer, loading, optimizer, partitioning, trainer

# decoder_start_token_id: Hub T5 configs carry it; transformers 5's T5Config has no default, and
# without it the model cannot shift `labels` into decoder inputs.
COMMON = dict(d_model=64, d_kv=16, num_heads=4, num_layers=2, relative_attention_num_buckets=32,
              relative_attention_max_distance=128, decoder_start_token_id=0)
HF_CONFIGS = {
    # Non-default dropout, epsilon and decoder depth check that each field is carried over.
    'v1_0': dict(COMMON, vocab_size=160, d_ff=128, feed_forward_proj='relu', dropout_rate=0.1),
    'v1_1': dict(COMMON, vocab_size=272, d_ff=96, feed_forward_proj='gated-gelu',
                 tie_word_embeddings=False, dropout_rate=0.0, num_decoder_layers=3,
                 layer_norm_epsilon=1e-5),
}
SCORE_TOLERANCE = 2e-3  # nats per sequence
LOGIT_TOLERANCE = 1e-4


def make_hf_model(name: str, seed: int = 0) -> transformers.T5ForConditionalGeneration:
  torch.manual_seed(seed)
  model = transformers.T5ForConditionalGeneration(transformers.T5Config(**HF_CONFIGS[name]))
  with torch.no_grad():
    for param_name, p in model.named_parameters():
      if 'layer_norm' in param_name:  # HF initialises norms to 1: make a swapped norm visible
        p.copy_(1.0 + 0.2 * torch.randn_like(p))
  if name == 'v1_1':  # transformers 5 would tie it; T5.1.1 has its own head
    d_model = model.config.d_model
    model.lm_head.weight = torch.nn.Parameter(
        torch.randn(model.config.vocab_size, d_model) * d_model ** -0.5)
  return model.eval()


def make_batch(vocab_size: int, seed: int = 0):
  """Unpacked EncDec features with padding; one row has a single target token."""
  rng = np.random.default_rng(seed)
  lengths = [(40, 24), (17, 9), (5, 24), (33, 1)]  # (inputs, targets) per row
  inputs = np.zeros((len(lengths), 40), np.int32)
  targets = np.zeros((len(lengths), 24), np.int32)
  for row, (n_in, n_tgt) in enumerate(lengths):
    inputs[row, :n_in] = rng.integers(2, vocab_size, n_in)
    targets[row, :n_tgt] = rng.integers(2, vocab_size, n_tgt)
  return {
      'encoder_input_tokens': inputs,
      'decoder_input_tokens': np.pad(targets[:, :-1], ((0, 0), (1, 0))),
      'decoder_target_tokens': targets,
      'decoder_loss_weights': (targets > 0).astype(np.float32),
  }


def hf_scores(model, batch):
  """(per-sequence log-likelihood as -summed cross-entropy, logits) from transformers."""
  labels = torch.tensor(np.where(batch['decoder_loss_weights'] > 0,
                                 batch['decoder_target_tokens'], -100)).long()
  inputs = torch.tensor(batch['encoder_input_tokens']).long()
  with torch.no_grad():  # HF shifts the labels right itself
    logits = model(input_ids=inputs, attention_mask=(inputs > 0).long(), labels=labels).logits
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100,
                                           reduction='none')
  return -ce.sum(-1).numpy(), logits.numpy()


@nnx.jit
def our_logits(model, batch):
  return model.logits_for_batch(batch)


def assert_same_params(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def load_converted(out_dir):
  """Our model as a user would load it: config from OUT/model.gin, params from the checkpoint."""
  try:
    config = loading.config_from_gin([os.path.join(out_dir, 'model.gin')])
  finally:
    gin.clear_config()
  return config, loading.load_model(config, out_dir, placement='host').model


@pytest.fixture(scope='module', params=sorted(HF_CONFIGS))
def converted(request, tmp_path_factory):
  name = request.param
  root = tmp_path_factory.mktemp(name)
  hf_model = make_hf_model(name)
  hf_model.save_pretrained(root / 'hf')
  convert.from_hf(str(root / 'hf'), str(root / 'ours'))
  config, model = load_converted(root / 'ours')
  return name, root, hf_model, config, model


def test_converted_model_scores_like_transformers(converted):
  name, _, hf_model, config, model = converted
  batch = make_batch(config.vocab_size)
  ours = infer.score_batch(model, batch)
  theirs, hf_logits = hf_scores(hf_model, batch)
  logits = np.asarray(our_logits(model, batch))
  real = batch['decoder_loss_weights'] > 0
  score_diff = np.abs(ours - theirs).max()
  logit_diff = np.abs(logits - hf_logits)[real].max()
  print(f'{name}: max |score diff| {score_diff:.2e} nats, max |logit diff| {logit_diff:.2e}')
  assert ours.shape == (4,) and np.all(ours < 0)
  assert score_diff < SCORE_TOLERANCE
  assert logit_diff < LOGIT_TOLERANCE


def test_config_fields_carry_over(converted):
  name, _, hf_model, config, _ = converted
  hf = hf_model.config
  assert config.logits_via_embedding == (name == 'v1_0') == hf.scale_decoder_outputs
  assert config.mlp_activations == {'v1_0': ('relu',), 'v1_1': ('gelu', 'linear')}[name]
  assert (config.num_encoder_layers, config.num_decoder_layers) == (hf.num_layers,
                                                                    hf.num_decoder_layers)
  assert (config.dropout_rate, config.layer_norm_epsilon) == (hf.dropout_rate,
                                                              hf.layer_norm_epsilon)
  assert (config.relative_attention_num_buckets, config.relative_attention_max_distance) == (
      32, 128)


def test_round_trip_gives_identical_tensors_that_transformers_loads(converted):
  name, root, hf_model, config, _ = converted
  back = root / 'back'
  convert.to_hf(str(root / 'ours'), config, str(back))
  original, exported = (load_file(d / 'model.safetensors') for d in (root / 'hf', back))
  assert sorted(exported) == sorted(original)
  assert ('lm_head.weight' in exported) == (name == 'v1_1')
  for key, value in original.items():
    assert np.array_equal(exported[key], value), key

  reloaded = transformers.T5ForConditionalGeneration.from_pretrained(back).eval()
  assert reloaded.config.scale_decoder_outputs == hf_model.config.scale_decoder_outputs
  batch = make_batch(config.vocab_size, seed=1)
  np.testing.assert_allclose(hf_scores(reloaded, batch)[0], hf_scores(hf_model, batch)[0],
                             rtol=0, atol=1e-5)


def test_checkpoint_is_the_train_state_that_train_resumes(converted):
  _, root, _, config, model = converted
  mesh, rules = partitioning.create_mesh({'data': -1}), partitioning.logical_axis_rules()
  setup = trainer.setup_train_state(  # what `python -m t5x_lite.train` restores onto
      config, optimizer.make_optimizer(optimizer.learning_rate_schedule()), 0, mesh, rules)
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    ckpt = checkpoints.Checkpointer(str(root / 'ours' / 'checkpoints'))
    step, state, data, _ = ckpt.restore(setup.abstract_state)
    ckpt.close()
  assert step == 0 and int(state['step']) == 0 and data['batch'] == 0
  assert_same_params(state['params'], nnx.to_pure_dict(nnx.state(model)))


def test_old_style_config_converts_to_the_same_untied_model(converted, tmp_path):
  """google/t5-v1_1-* configs say `tie_word_embeddings: false` and nothing about scaling."""
  name, root, _, config, model = converted
  if name != 'v1_1':
    pytest.skip('the untied convention')
  old = tmp_path / 'old'
  shutil.copytree(root / 'hf', old)
  hf_config = json.loads((old / 'config.json').read_text())
  assert hf_config['tie_word_embeddings'] is True  # what transformers 5 writes ...
  assert hf_config['scale_decoder_outputs'] is False  # ... for an untied head
  del hf_config['scale_decoder_outputs']
  hf_config['tie_word_embeddings'] = False
  (old / 'config.json').write_text(json.dumps(hf_config))
  assert convert.from_hf(str(old), str(tmp_path / 'ours')) == config
  restored = loading.load_model(config, str(tmp_path / 'ours'), placement='host').params
  assert_same_params(restored, nnx.to_pure_dict(nnx.state(model)))


@pytest.mark.parametrize('fields, tied', [
    ({}, True),                                                           # T5 v1.0 (any version)
    ({'tie_word_embeddings': True}, True),
    ({'tie_word_embeddings': False}, False),                              # transformers < 5
    ({'tie_word_embeddings': True, 'scale_decoder_outputs': False}, False),  # transformers >= 5
    ({'tie_word_embeddings': False, 'scale_decoder_outputs': True}, True),   # explicit flag wins
])
def test_head_convention_matches_transformers(fields, tied):
  hf_config = dict(COMMON, vocab_size=128, d_ff=96, **fields)
  assert convert.hf_config_to_ours(hf_config).logits_via_embedding is tied
  # transformers reads the same config the same way (it always reports tie_word_embeddings).
  assert transformers.T5Config(**hf_config).scale_decoder_outputs is tied


@pytest.mark.parametrize('proj', ['relu', 'gated-gelu', 'gated-silu', 'gelu_new', 'gated-relu'])
def test_config_round_trip_through_hf(proj):
  config = convert.hf_config_to_ours(dict(COMMON, vocab_size=128, d_ff=96,
                                          feed_forward_proj=proj))
  hf_config = convert.ours_to_hf_config(config)
  assert convert.hf_config_to_ours(hf_config) == config
  parsed = transformers.T5Config(**hf_config)
  assert parsed.is_gated_act == proj.startswith('gated')
  if 'gelu' in proj:
    assert parsed.dense_act_fn == 'gelu_new'  # the tanh GELU, our 'gelu'


def test_tied_unscaled_head_becomes_a_separate_head_equal_to_the_embedding():
  """What transformers 5 builds for T5Config(tie_word_embeddings=False) with no lm_head.weight."""
  hf_config = dict(COMMON, vocab_size=128, d_ff=96, feed_forward_proj='gated-gelu',
                   tie_word_embeddings=False)
  torch.manual_seed(0)
  hf_model = transformers.T5ForConditionalGeneration(transformers.T5Config(**hf_config))
  assert hf_model.lm_head.weight is hf_model.shared.weight
  state_dict = {k: v.numpy() for k, v in hf_model.state_dict().items() if k != 'lm_head.weight'}
  config = convert.hf_config_to_ours(hf_config)
  params = convert.hf_to_params(state_dict, config)
  np.testing.assert_array_equal(params['lm_head']['kernel'], state_dict['shared.weight'].T)


def test_sharded_safetensors_and_pytorch_bin_read_the_same_weights(converted, tmp_path):
  name, root, hf_model, config, model = converted
  if name != 'v1_0':
    pytest.skip('once is enough')
  tensors = load_file(root / 'hf' / 'model.safetensors')
  names = sorted(tensors)
  shards = {'model-00001-of-00002.safetensors': names[::2],
            'model-00002-of-00002.safetensors': names[1::2]}
  for shard, keys in shards.items():
    save_file({k: tensors[k] for k in keys}, tmp_path / shard)
  (tmp_path / 'model.safetensors.index.json').write_text(json.dumps(
      {'weight_map': {k: shard for shard, keys in shards.items() for k in keys}}))
  assert sorted(convert.read_hf_weights(str(tmp_path))) == names
  # A transformers 4 pytorch_model.bin also holds the tied copies (lm_head, embed_tokens).
  legacy = tmp_path / 'legacy'
  legacy.mkdir()
  torch.save(hf_model.state_dict(), legacy / "pytorch_model.bin")
  state_dict = convert.read_hf_weights(str(legacy))
  assert {'lm_head.weight', 'encoder.embed_tokens.weight'} <= set(state_dict)
  params = convert.hf_to_params(state_dict, config)
  assert_same_params(params, nnx.to_pure_dict(nnx.state(model)))


def test_attention_reshapes_invert_each_other():
  rng = np.random.default_rng(0)
  for kind, shape in [('qkv', (8, 2, 3)), ('out', (2, 3, 8)), ('dense', (8, 5)), ('copy', (4,))]:
    ours = rng.normal(size=shape)
    hf = convert.tensor_to_hf(kind, ours)
    assert hf.shape == convert.hf_shape(kind, shape)
    np.testing.assert_array_equal(convert.tensor_to_ours(kind, hf, shape), ours)
  # Head h of a query kernel is HF rows [h·d_kv, (h+1)·d_kv) (HF views q as [..., heads, d_kv]).
  q = rng.normal(size=(8, 2, 3))
  np.testing.assert_array_equal(convert.tensor_to_hf('qkv', q)[3:6], q[:, 1, :].T)


# ----------------------------------------------------------------------------- command line


def _cli(capsys, *args):
  code = convert.main(list(args))
  err = capsys.readouterr().err
  gin.clear_config()
  return code, err


def test_cli_from_hf_then_to_hf(converted, capsys, tmp_path):
  name, root, _, config, _ = converted
  if name != 'v1_0':
    pytest.skip('once is enough')
  code, err = _cli(capsys, f'--to_hf={root / "ours"}', f'--gin_file={root / "ours" / "model.gin"}',
                   f'--out_dir={tmp_path / "hf"}')
  assert (code, err) == (0, '')
  assert sorted(load_file(tmp_path / 'hf' / 'model.safetensors')) == sorted(
      load_file(root / 'hf' / 'model.safetensors'))
  code, err = _cli(capsys, f'--from_hf={tmp_path / "hf"}', f'--out_dir={tmp_path / "ours"}')
  assert (code, err) == (0, '')
  assert load_converted(tmp_path / 'ours')[0] == config


def _error(capsys, *args):
  code, err = _cli(capsys, *args)
  assert code == 2 and err.startswith('error: ') and err.count('\n') == 1, err
  return err


def test_cli_errors_are_one_line(capsys, tmp_path):
  assert 'not found' in _error(capsys, f'--from_hf={tmp_path / "nope"}', f'--out_dir={tmp_path}')
  assert 'no config.json' in _error(capsys, f'--from_hf={tmp_path}', f'--out_dir={tmp_path}/o')
  (tmp_path / 'config.json').write_text(json.dumps({'feed_forward_proj': 'gelu'}))
  assert "unsupported feed_forward_proj 'gelu'" in _error(capsys, f'--from_hf={tmp_path}',
                                                          f'--out_dir={tmp_path}/o')
  assert 'one of the arguments --from_hf --to_hf is required' in _error(
      capsys, f'--out_dir={tmp_path}')
  assert 'not allowed with argument --from_hf' in _error(
      capsys, f'--from_hf={tmp_path}', f'--to_hf={tmp_path}', f'--out_dir={tmp_path}/o')
  assert '--gin_file' in _error(capsys, f'--to_hf={tmp_path}', f'--out_dir={tmp_path}/o')
  assert 'unrecognized arguments: --frm_hf=x' in _error(capsys, '--frm_hf=x', '--from_hf=y',
                                                        f'--out_dir={tmp_path}')


def test_shape_mismatch_names_the_tensor_and_both_shapes(converted, capsys, tmp_path):
  name, root, _, _, _ = converted
  if name != 'v1_1':
    pytest.skip('once is enough')
  shutil.copy(root / 'hf' / 'config.json', tmp_path / 'config.json')
  tensors = load_file(root / 'hf' / 'model.safetensors')
  bad = 'decoder.block.2.layer.1.EncDecAttention.o.weight'
  tensors[bad] = tensors[bad][:, :32]
  save_file(tensors, tmp_path / 'model.safetensors')
  err = _error(capsys, f'--from_hf={tmp_path}', f'--out_dir={tmp_path}/o')
  assert bad in err and '(64, 32)' in err and '(64, 64)' in err
  assert not (tmp_path / 'o' / 'checkpoints').exists()
  # The other way: a model gin that does not describe the checkpoint.
  err = _error(capsys, f'--to_hf={root / "ours"}', f'--gin_file={root / "ours" / "model.gin"}',
               '--gin.t5x_lite.models.T5Config.d_ff=100', f'--out_dir={tmp_path}/hf')
  assert 'layers/0/mlp/wi_0/kernel' in err and '(64, 96)' in err and '(64, 100)' in err
  err = _error(capsys, f'--to_hf={root / "ours"}', f'--gin_file={root / "ours" / "model.gin"}',
               '--gin.t5x_lite.models.T5Config.logits_via_embedding=True',
               f'--out_dir={tmp_path}/hf')
  assert 'extra' in err and 'lm_head/kernel' in err
  assert not (tmp_path / 'hf').exists()


def test_score_batch_matches_a_numpy_log_softmax(converted):
  _, _, _, config, model = converted
  batch = make_batch(config.vocab_size, seed=2)
  logits = np.asarray(our_logits(model, batch), np.float64)
  shifted = logits - logits.max(-1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  token = np.take_along_axis(log_probs, batch['decoder_target_tokens'][..., None], -1)[..., 0]
  expected = (token * batch['decoder_loss_weights']).sum(-1)
  np.testing.assert_allclose(infer.score_batch(model, batch), expected, rtol=1e-5, atol=1e-4)
