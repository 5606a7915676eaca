"""Hugging Face T5 <-> t5x_lite: configs, weights, and the `python -m t5x_lite.convert` command.

    python -m t5x_lite.convert --from_hf=HF_DIR --out_dir=OUT
    python -m t5x_lite.train --gin_file=OUT/model.gin --gin_file=gin/runs/pretrain.gin \
        --gin.MODEL_DIR=OUT                  # resumes from OUT/checkpoints/0
    python -m t5x_lite.convert --to_hf=OUT --gin_file=OUT/model.gin --out_dir=HF_OUT

`--from_hf` writes OUT/model.gin (every T5Config field) and OUT/checkpoints/0, a full train state at
step 0: the converted params, a fresh optimizer state and the rng. A full state rather than bare
params means `train` resumes from it unchanged. The optimizer state comes from `make_optimizer` as
gin has it (Adafactor, as in gin/runs/pretrain.gin, by default); to fine-tune with another
optimizer pass the same bindings here, e.g. `--gin.make_optimizer.name='adamw'`, or train would not
find a state it can restore. `--to_hf` takes a MODEL_DIR, its checkpoints/ directory or one step
directory (newest step by default), reads only the params, and writes config.json and
model.safetensors for `transformers.T5ForConditionalGeneration.from_pretrained`.

The weight mapping is a table from our parameter paths to HF state-dict names plus one of four
reshapes (`param_map`). HF Linear weights are [out, in], the transpose of our kernels; attention
q/k/v/o are [heads·d_kv, d_model] there and ('embed', 'heads', 'kv') kernels here. HF keeps each
stack's relative-position table in block 0's self-attention; ours has one per stack.

Output head conventions. T5 v1.0 ties the head to the embedding and scales the decoder output by
d_model**-0.5 (our `logits_via_embedding`); T5.1.1 has a separate, unscaled `lm_head`. Configs
from transformers < 5 (e.g. google/t5-v1_1-*) say so with `tie_word_embeddings: false`;
transformers >= 5 always writes `tie_word_embeddings: true` and records an unscaled head as
`scale_decoder_outputs: false`, with `lm_head.weight` stored when it differs from the embedding.
We read scaling from `scale_decoder_outputs` when present, else from `tie_word_embeddings`, as
transformers 5 does. An unscaled head without its own `lm_head.weight` (what transformers 5 builds
for `T5Config(tie_word_embeddings=False)`) becomes a separate head initialised to the embedding.
We write `tie_word_embeddings: false` plus `scale_decoder_outputs: false` for a separate head, which
both major versions of transformers read as untied and unscaled.

Conversion needs no torch: weights go through safetensors' numpy API, and torch is imported only
to read a legacy pytorch_model.bin.
"""

from __future__ import annotations

if __name__ == '__main__':
  # `--help` answers before the imports below (JAX, TensorFlow: seconds); a run goes to the
  # importable module rather than this copy under __main__, so gin registers each function once.
  import sys
  from t5x_lite import cli
  sys.exit(cli.main('convert'))

import dataclasses
import json
import math
import os
import sys
from typing import Any, Mapping, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from t5x_lite import (checkpoints, cli, gin_utils, loading, models, optimizer, partitioning,
                      trainer)
from t5x_lite.gin_utils import UsageError
from t5x_lite.models import T5Config, t5

# HF `feed_forward_proj` -> our `mlp_activations`. HF's 'gated-gelu' is the tanh GELU (its
# 'gelu_new', which T5.1.1 used); a plain 'gelu' there is the exact erf GELU, which we lack.
FEED_FORWARD_PROJ = {
    'relu': ('relu',),
    'gated-relu': ('relu', 'linear'),
    'gelu_new': ('gelu',),
    'gated-gelu': ('gelu', 'linear'),
    'gated-gelu_new': ('gelu', 'linear'),
    'silu': ('silu',),
    'gated-silu': ('silu', 'linear'),
}
# Ours -> HF: the first HF name for each activation tuple.
MLP_ACTIVATIONS_TO_HF = {}
for _name, _acts in FEED_FORWARD_PROJ.items():
  MLP_ACTIVATIONS_TO_HF.setdefault(_acts, _name)

# transformers' T5Config defaults, for keys a config.json leaves out.
HF_DEFAULTS = dict(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8,
                   relative_attention_num_buckets=32, relative_attention_max_distance=128,
                   dropout_rate=0.1, layer_norm_epsilon=1e-6, feed_forward_proj='relu')

# Tensors HF checkpoints may carry that have no parameter of their own here: copies of the
# embedding, and a cross-attention position table that T5 never uses.
IGNORED_HF_TENSORS = ('encoder.embed_tokens.weight', 'decoder.embed_tokens.weight',
                      'decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight')

# ---------------------------------------------------------------------------------------------
# Configs.
# ---------------------------------------------------------------------------------------------


def hf_scales_decoder_output(hf_config: Mapping[str, Any]) -> bool:
  """Whether HF multiplies the decoder output by d_model**-0.5 (T5 v1.0's tied head)."""
  if 'scale_decoder_outputs' in hf_config:  # transformers >= 5
    return bool(hf_config['scale_decoder_outputs'])
  return hf_config.get('tie_word_embeddings', True) is not False  # older configs


def hf_config_to_ours(hf_config: Mapping[str, Any]) -> T5Config:
  """A transformers T5 config.json (as a dict) -> T5Config; UsageError if we cannot run it."""
  cfg = {**HF_DEFAULTS, **hf_config}
  if cfg.get('model_type', 't5') not in ('t5', 'mt5'):
    raise UsageError(f"config.json has model_type {cfg['model_type']!r}; only 't5' and 'mt5' "
                     'convert (same architecture, one relative-position table per stack).')
  if cfg.get('is_encoder_decoder', True) is False:
    raise UsageError('config.json has is_encoder_decoder: false; only encoder-decoder T5 '
                     'checkpoints convert.')
  proj = cfg['feed_forward_proj']
  if proj not in FEED_FORWARD_PROJ:
    raise UsageError(f'unsupported feed_forward_proj {proj!r} in config.json; supported: '
                     f'{sorted(FEED_FORWARD_PROJ)} (plain "gelu" is the exact GELU, which t5x_lite '
                     'does not implement).')
  num_layers = cfg['num_layers']
  num_decoder_layers = cfg.get('num_decoder_layers')
  try:
    return T5Config(
        vocab_size=cfg['vocab_size'], d_model=cfg['d_model'], num_heads=cfg['num_heads'],
        d_kv=cfg['d_kv'], d_ff=cfg['d_ff'], num_encoder_layers=num_layers,
        num_decoder_layers=num_layers if num_decoder_layers is None else num_decoder_layers,
        mlp_activations=FEED_FORWARD_PROJ[proj],
        dropout_rate=float(cfg['dropout_rate']),
        logits_via_embedding=hf_scales_decoder_output(cfg),
        relative_attention_num_buckets=cfg['relative_attention_num_buckets'],
        relative_attention_max_distance=cfg['relative_attention_max_distance'],
        layer_norm_epsilon=float(cfg['layer_norm_epsilon']))
  except (ValueError, TypeError, KeyError) as e:
    raise UsageError(f'config.json does not give a valid T5Config: {type(e).__name__}: {e}') from e


def ours_to_hf_config(config: T5Config) -> dict[str, Any]:
  """T5Config -> a transformers T5 config.json dict (float32 weights)."""
  if config.architecture != 'encoder_decoder' or config.shared_encoder_decoder:
    raise UsageError(f'only unshared encoder-decoder models convert to HF T5; this one has '
                     f'architecture={config.architecture!r}, '
                     f'shared_encoder_decoder={config.shared_encoder_decoder}.')
  proj = MLP_ACTIVATIONS_TO_HF.get(tuple(config.mlp_activations))
  if proj is None:
    raise UsageError(f'mlp_activations {tuple(config.mlp_activations)} has no HF '
                     f'feed_forward_proj; convertible: {sorted(MLP_ACTIVATIONS_TO_HF)}.')
  tied = config.logits_via_embedding
  return {
      'architectures': ['T5ForConditionalGeneration'],
      'model_type': 't5',
      'vocab_size': config.vocab_size,
      'd_model': config.d_model,
      'd_kv': config.d_kv,
      'd_ff': config.d_ff,
      'num_layers': config.num_encoder_layers,
      'num_decoder_layers': config.num_decoder_layers,
      'num_heads': config.num_heads,
      'relative_attention_num_buckets': config.relative_attention_num_buckets,
      'relative_attention_max_distance': config.relative_attention_max_distance,
      'dropout_rate': config.dropout_rate,
      'layer_norm_epsilon': config.layer_norm_epsilon,
      'initializer_factor': 1.0,
      'feed_forward_proj': proj,
      'is_encoder_decoder': True,
      'use_cache': True,
      'pad_token_id': 0,
      'eos_token_id': 1,
      'decoder_start_token_id': 0,
      'tie_word_embeddings': tied,
      'scale_decoder_outputs': tied,
      'dtype': 'float32',
  }


def model_gin(config: T5Config, comment: str = '') -> str:
  """A model gin file binding MODEL_CONFIG and every T5Config field (cf. gin/models/)."""
  lines = [f'# {line}'.rstrip() for line in comment.splitlines()]
  lines += ['import t5x_lite.models', '',
            f'VOCAB_SIZE = {config.vocab_size}', f'DROPOUT_RATE = {config.dropout_rate!r}',
            'MODEL_CONFIG = @t5x_lite.models.T5Config()', '']
  macros = {'vocab_size': '%VOCAB_SIZE', 'dropout_rate': '%DROPOUT_RATE'}
  for field in dataclasses.fields(T5Config):
    value = macros.get(field.name, repr(getattr(config, field.name)))
    lines.append(f't5x_lite.models.T5Config.{field.name} = {value}')
  return '\n'.join(lines) + '\n'


# ---------------------------------------------------------------------------------------------
# Weights: a name table and four reshapes, all pure.
# ---------------------------------------------------------------------------------------------

# How an HF tensor becomes our parameter:
#   'copy'  same layout (embedding, norm scales, position tables)
#   'dense' torch Linear [out, in] -> kernel [in, out]
#   'qkv'   [heads·d_kv, d_model] -> [d_model, heads, d_kv]
#   'out'   [d_model, heads·d_kv] -> [heads, d_kv, d_model]
def _attention(ours: str, hf: str) -> dict[str, tuple[str, str]]:
  return {f'{ours}/{name}/kernel': (f'{hf}.{short}.weight', 'out' if short == 'o' else 'qkv')
          for name, short in (('query', 'q'), ('key', 'k'), ('value', 'v'), ('out', 'o'))}


def _mlp(config: T5Config, ours: str, hf: str) -> dict[str, tuple[str, str]]:
  n = len(config.mlp_activations)
  names = ['wi'] if n == 1 else [f'wi_{i}' for i in range(n)]
  return {f'{ours}/{name}/kernel': (f'{hf}.{name}.weight', 'dense') for name in names + ['wo']}


# The sub-layers of each stack's block in HF's order (HF's `layer.{j}`): (our pre-norm, our
# sub-layer, HF module).
_BLOCKS = {
    'encoder': (('pre_attention_layer_norm', 'attention', 'SelfAttention'),
                ('pre_mlp_layer_norm', 'mlp', 'DenseReluDense')),
    'decoder': (('pre_self_attention_layer_norm', 'self_attention', 'SelfAttention'),
                ('pre_cross_attention_layer_norm', 'encoder_decoder_attention', 'EncDecAttention'),
                ('pre_mlp_layer_norm', 'mlp', 'DenseReluDense')),
}


def param_map(config: T5Config) -> dict[str, tuple[str, str]]:
  """Our param path ('encoder/layers/0/mlp/wo/kernel') -> (HF state-dict name, reshape kind)."""
  m = {'token_embedder/embedding': ('shared.weight', 'copy')}
  relpos = 'block.0.layer.0.SelfAttention.relative_attention_bias.weight'
  for stack, num_layers in (('encoder', config.num_encoder_layers),
                            ('decoder', config.num_decoder_layers)):
    m[f'{stack}/relpos_bias/embedding'] = (f'{stack}.{relpos}', 'copy')
    for i in range(num_layers):
      ours, hf = f'{stack}/layers/{i}', f'{stack}.block.{i}'
      for j, (norm, sub, module) in enumerate(_BLOCKS[stack]):
        m[f'{ours}/{norm}/scale'] = (f'{hf}.layer.{j}.layer_norm.weight', 'copy')
        m.update(_mlp(config, f'{ours}/{sub}', f'{hf}.layer.{j}.{module}') if sub == 'mlp'
                 else _attention(f'{ours}/{sub}', f'{hf}.layer.{j}.{module}'))
    m[f'{stack}/{stack}_norm/scale'] = (f'{stack}.final_layer_norm.weight', 'copy')
  if not config.logits_via_embedding:
    m['lm_head/kernel'] = ('lm_head.weight', 'dense')
  return m


def hf_shape(kind: str, our_shape: Sequence[int]) -> tuple[int, ...]:
  """The HF tensor shape that holds a parameter of `our_shape`."""
  if kind == 'copy':
    return tuple(our_shape)
  if kind in ('dense', 'qkv'):
    return (math.prod(our_shape[1:]), our_shape[0])
  return (our_shape[-1], math.prod(our_shape[:-1]))  # 'out'


def tensor_to_ours(kind: str, x: np.ndarray, our_shape: Sequence[int]) -> np.ndarray:
  """HF tensor -> our parameter of `our_shape` (transpose, then split heads)."""
  return x if kind == 'copy' else x.T.reshape(our_shape)


def tensor_to_hf(kind: str, x: np.ndarray) -> np.ndarray:
  """Our parameter -> HF tensor (merge heads, then transpose), C-contiguous for safetensors."""
  if kind in ('dense', 'qkv'):
    x = x.reshape(x.shape[0], -1).T
  elif kind == 'out':
    x = x.reshape(-1, x.shape[-1]).T
  return np.ascontiguousarray(x)


def _path_str(path) -> str:
  return '/'.join(str(p.key) for p in path)


def hf_to_params(state_dict: Mapping[str, np.ndarray], config: T5Config) -> dict:
  """HF state dict -> our params (a pure dict shaped like the model's, float32 numpy).

  Every tensor is checked: a missing, unexpected or misshapen one raises a UsageError naming it.
  """
  mapping = param_map(config)
  state_dict = dict(state_dict)
  if not config.logits_via_embedding and 'lm_head.weight' not in state_dict:
    # transformers 5 ties an unscaled head unless the checkpoint stores its own: keep that model.
    state_dict['lm_head.weight'] = state_dict.get('shared.weight')
  if config.logits_via_embedding and 'lm_head.weight' in state_dict:
    head, shared = state_dict.pop('lm_head.weight'), state_dict.get('shared.weight')
    if shared is None or not np.array_equal(head, shared):
      raise UsageError('config.json asks for a scaled, tied output layer (T5 v1.0) but '
                       'lm_head.weight differs from shared.weight; t5x_lite has no scaled '
                       'separate head. Set "scale_decoder_outputs": false only if HF ran it '
                       'unscaled.')
  expected = {hf for hf, _ in mapping.values()}
  missing = sorted(n for n in expected if state_dict.get(n) is None)
  if missing:
    raise UsageError(f'the HF checkpoint lacks {len(missing)} tensor(s) that config.json implies, '
                     f'e.g. {missing[:3]}; check that config.json belongs to these weights.')
  unexpected = sorted(set(state_dict) - expected - set(IGNORED_HF_TENSORS))
  if unexpected:
    raise UsageError(f'the HF checkpoint has {len(unexpected)} tensor(s) with no place in a model '
                     f'of this config.json, e.g. {unexpected[:3]}.')

  unrolled = dataclasses.replace(config, scan_layers=False)  # HF names layers one by one
  _, abstract, _ = trainer.abstract_params_and_axes(unrolled)

  def convert(path, leaf):
    hf_name, kind = mapping[_path_str(path)]
    x = np.asarray(state_dict[hf_name])
    want = hf_shape(kind, leaf.shape)
    if x.shape != want:
      raise UsageError(f'{hf_name}: the checkpoint has shape {x.shape}, config.json implies '
                       f'{want} (for our {_path_str(path)} of shape {tuple(leaf.shape)}).')
    return tensor_to_ours(kind, x.astype(np.float32), leaf.shape)

  params = jax.tree_util.tree_map_with_path(convert, abstract)
  return jax.tree.map(np.asarray, t5.stack_layer_params(params)) if config.scan_layers else params


def params_to_hf(params: Any, config: T5Config) -> dict[str, np.ndarray]:
  """Our params (pure dict) -> HF state dict, float32; the tied head stores no lm_head.weight."""
  mapping = param_map(config)
  if config.scan_layers:
    params = t5.unstack_layer_params(params)
  out = {}
  for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
    hf_name, kind = mapping[_path_str(path)]
    out[hf_name] = tensor_to_hf(kind, np.asarray(x, dtype=np.float32))
  return out


# ---------------------------------------------------------------------------------------------
# Files.
# ---------------------------------------------------------------------------------------------


def read_hf_config(hf_dir: str) -> dict[str, Any]:
  if not os.path.isdir(hf_dir):
    raise UsageError(f'HF model directory not found: {hf_dir} (give --from_hf a local directory '
                     'written by save_pretrained or downloaded from the Hub).')
  path = os.path.join(hf_dir, 'config.json')
  if not os.path.isfile(path):
    raise UsageError(f'{hf_dir} has no config.json; it is not a transformers model directory.')
  try:
    with open(path, encoding='utf-8') as f:
      config = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise UsageError(f'{path} cannot be read as JSON ({e}); re-save the model with '
                     'save_pretrained or fix the file.') from e
  if not isinstance(config, dict):
    raise UsageError(f'{path} holds a JSON {type(config).__name__}, not an object of config '
                     'fields; it is not a transformers config.json.')
  return config


def read_hf_weights(hf_dir: str) -> dict[str, np.ndarray]:
  """model.safetensors, sharded safetensors (an index.json) or, with torch, pytorch_model.bin."""
  single = os.path.join(hf_dir, 'model.safetensors')
  index = os.path.join(hf_dir, 'model.safetensors.index.json')
  legacy = os.path.join(hf_dir, 'pytorch_model.bin')
  if os.path.isfile(single):
    return _read_safetensors(single)
  if os.path.isfile(index):
    try:
      with open(index, encoding='utf-8') as f:
        shards = sorted(set(json.load(f)['weight_map'].values()))
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as e:
      raise UsageError(f'{index} is not a valid safetensors index (a JSON object whose '
                       f'"weight_map" maps tensor names to shard files): {e}.') from e
    out = {}
    for shard in shards:
      path = os.path.join(hf_dir, shard)
      if not os.path.isfile(path):
        raise UsageError(f'{path} is missing ({index} lists it); copy every shard of the model '
                         'into the directory.')
      out.update(_read_safetensors(path))
    return out
  if os.path.isfile(legacy):
    try:
      import torch  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise UsageError(f'{legacy} needs torch to read; install torch, or re-save the model with '
                       'safetensors (save_pretrained does by default).') from e
    state = torch.load(legacy, map_location='cpu', weights_only=True)
    return {k: v.float().numpy() for k, v in state.items()}
  raise UsageError(f'{hf_dir} has no model.safetensors, model.safetensors.index.json or '
                   'pytorch_model.bin.')


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
  try:
    return dict(load_file(path))
  except Exception as e:  # pylint: disable=broad-except  (SafetensorError has no public base)
    raise UsageError(f'{path} is not a readable safetensors file ({type(e).__name__}: '
                     f'{(str(e).splitlines() or [""])[0][:200]}); it is truncated or corrupt: copy '
                     'or save it again.') from e


def save_train_state(model_dir: str, config: T5Config, params: Any, seed: int = 0,
                     data: Mapping[str, Any] | None = None) -> str:
  """Writes MODEL_DIR/checkpoints/0: `params`, a fresh optimizer state (gin's make_optimizer),
  step 0 and the rng of `seed`: the state `python -m t5x_lite.train` resumes from."""
  mesh = partitioning.create_mesh({'data': -1})
  rules = partitioning.logical_axis_rules()
  setup = trainer.setup_train_state(
      config, optimizer.make_optimizer(optimizer.learning_rate_schedule()), seed, mesh, rules)
  directory = os.path.join(model_dir, 'checkpoints')
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    params = jax.device_put(jax.tree.map(jnp.asarray, params), setup.shardings['params'])
    state = setup.state_with_params(params, seed)
    ckpt = checkpoints.Checkpointer(directory, async_save=False)
    ckpt.save(0, state, {'batch': 0, 'seed': seed, **(data or {})})
    ckpt.close()
  return os.path.join(directory, '0')


# ---------------------------------------------------------------------------------------------
# The two directions.
# ---------------------------------------------------------------------------------------------


def from_hf(hf_dir: str, out_dir: str, seed: int = 0) -> T5Config:
  """HF_DIR (config.json + weights) -> OUT/model.gin and a step-0 train state in OUT/checkpoints."""
  config = hf_config_to_ours(read_hf_config(hf_dir))
  if os.path.exists(os.path.join(out_dir, 'model.gin')) or os.path.exists(
      os.path.join(out_dir, 'checkpoints')):
    raise UsageError(f'{out_dir} already holds a model.gin or checkpoints/; choose a new '
                     '--out_dir so nothing is overwritten.')
  params = hf_to_params(read_hf_weights(hf_dir), config)
  os.makedirs(out_dir, exist_ok=True)
  source, model_dir = os.path.abspath(hf_dir), os.path.abspath(out_dir)
  comment = (f'Converted from the Hugging Face T5 model in {source}\n'
             f'by `python -m t5x_lite.convert`; weights: {model_dir}/checkpoints/0.\n'
             'Train on with --gin_file=<this file> --gin_file=gin/runs/pretrain.gin '
             f'--gin.MODEL_DIR={model_dir}')
  with open(os.path.join(out_dir, 'model.gin'), 'w') as f:
    f.write(model_gin(config, comment))
  save_train_state(out_dir, config, params, seed, {'converted_from': source})
  return config


def to_hf(checkpoint: str, config: T5Config, out_dir: str) -> str:
  """Our checkpoint (MODEL_DIR, checkpoints/ or a step) -> OUT/config.json, model.safetensors."""
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  hf_config = ours_to_hf_config(config)
  tensors = params_to_hf(loading.load_model(config, checkpoint, placement='host').params, config)
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, 'config.json'), 'w') as f:
    json.dump(hf_config, f, indent=2, sort_keys=True)
  save_file(tensors, os.path.join(out_dir, 'model.safetensors'), metadata={'format': 'pt'})
  return out_dir


# ---------------------------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------------------------

def run(argv: list[str]) -> int:
  gin_files, bindings, rest = gin_utils.split_flags(argv)
  args = cli.parser('convert').parse_args(rest)
  if args.from_hf:
    gin.clear_config()
    if gin_files:  # gin configures the optimizer whose fresh state is saved
      gin_utils.parse(gin_files, bindings)
    elif bindings:
      try:
        gin.parse_config_files_and_bindings([], bindings, finalize_config=False)
      except (ValueError, SyntaxError, KeyError, ImportError) as e:
        raise UsageError(f'gin: {str(e).splitlines()[0]}') from e
    config = from_hf(args.from_hf, args.out_dir)
    print(f"Wrote {args.out_dir}/model.gin and {args.out_dir}/checkpoints/0 "
          f'({models.count_params(config):,} params).')
    return 0
  if not gin_files:
    raise UsageError('--to_hf needs --gin_file=MODEL.gin (e.g. the model.gin --from_hf wrote) '
                     'to know the model config.')
  config = loading.config_from_gin(gin_files, bindings)
  out = to_hf(args.to_hf, config, args.out_dir)
  print(f'Wrote {out}/config.json and {out}/model.safetensors.')
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  """Entry point; bad input prints `error: ...` on one line and exits 2 (as train does)."""
  return gin_utils.run_cli(run, argv)

