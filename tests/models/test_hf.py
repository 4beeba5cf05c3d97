"""Hugging Face checkpoints: config.json and safetensors files, written here from
the format's definition (tensors with the safetensors package's own writer),
load to the same params and logits as the model's own."""

import dataclasses
import functools
import importlib.util
import json
import os
import re

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from absl import flags
from safetensors.numpy import save_file

from pasta_jax import errors
from pasta_jax.models import checkpoint
from pasta_jax.models import config as config_lib
from pasta_jax.models import hf
from pasta_jax.models import hf_config
from pasta_jax.models.config import GEMMA3_PATTERN
from tests.models import checkpoint_fixtures as fx
from tests.models import helpers

# Hugging Face family of each test config.
FAMILY = {'gemma1_mha': 'gemma', 'gemma1_mqa': 'gemma', 'gemma2': 'gemma2',
          'gemma2_transposed': 'gemma2', 'gemma3': 'gemma3_text'}


@pytest.mark.parametrize('name,shards,dtype', [
    ('gemma1_mha', 1, 'float32'),
    ('gemma1_mqa', 2, 'bfloat16'),
    ('gemma2', 2, 'bfloat16'),
    ('gemma2_transposed', 1, 'float16'),
    ('gemma3', 2, 'bfloat16'),
])
def test_hugging_face_checkpoint(tmp_path, name, shards, dtype):
  config = helpers.CONFIGS[name]
  family = FAMILY[name]
  params = fx.bf16_exact(helpers.params_for(config))
  state = fx.hf_state_dict(params, config, family)
  state = {k: v.astype(jnp.dtype(dtype)) for k, v in state.items()}
  if family == 'gemma3_text':
    # Half the tensors stay float32: a checkpoint may mix dtypes.
    state = {k: (v.astype(np.float32) if i % 2 else v)
             for i, (k, v) in enumerate(sorted(state.items()))}
  hf_json = fx.hf_config(config, family, dtype=dtype)
  fx.write_hf_checkpoint(tmp_path, state, hf_json, shards=shards)
  if shards > 1:
    assert os.path.exists(tmp_path / 'model.safetensors.index.json')
  # With the architecture's own config (float32 params) ...
  got_config, loaded = hf.load_hf_checkpoint(str(tmp_path), config)
  assert got_config == config
  if dtype == 'float16':
    params = jax.tree.map(lambda x: x.astype(np.float16).astype(np.float32),
                          params)
  fx.assert_same_params(loaded, params)
  np.testing.assert_array_equal(fx.logits(config, loaded), fx.logits(config, params))
  # ... and with the config derived from config.json alone. Hugging Face does
  # not record the gating layout: the family default applies (transposed for
  # Gemma 2 and 3), and the logits are the same either way.
  derived, loaded2 = hf.load_hf_checkpoint(str(tmp_path))
  assert derived.transpose_gating_einsum == (family != 'gemma')
  assert derived.attention_types == config.attention_types
  assert derived == dataclasses.replace(
      config, dtype='float32' if dtype == 'float32' else 'bfloat16',
      param_dtype=dtype, attention_pattern=derived.attention_pattern,
      transpose_gating_einsum=derived.transpose_gating_einsum,
      query_pre_attn_scalar=derived.query_pre_attn_scalar)
  assert derived.query_scale == config.query_scale
  derived32 = dataclasses.replace(derived, dtype='float32',
                                  param_dtype='float32')
  loaded2 = jax.tree.map(lambda x: np.asarray(x, np.float32), loaded2)
  np.testing.assert_allclose(fx.logits(derived32, loaded2),
                             fx.logits(config, params), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('name', ['gemma2', 'gemma3'])
def test_hf_config_spellings_agree(name):
  config = helpers.CONFIGS[name]
  family = FAMILY[name]
  old = hf_config.config_from_hf(fx.hf_config(config, family, '4.x'))
  new = hf_config.config_from_hf(fx.hf_config(config, family, '5.x'))
  assert old == new
  assert old.attention_types == config.attention_types
  assert (old.global_rope_base, old.local_rope_base,
          old.global_rope_scale_factor) == (config.global_rope_base,
                                            config.local_rope_base,
                                            config.global_rope_scale_factor)


def test_hf_multimodal_gemma3_config_uses_text_defaults():
  # The gemma-3-4b config.json lists few text keys; the rest are defaults.
  hf_json = {'model_type': 'gemma3', 'torch_dtype': 'bfloat16',
        'text_config': {'model_type': 'gemma3_text', 'hidden_size': 2560,
                        'intermediate_size': 10240, 'num_hidden_layers': 34,
                        'rope_scaling': {'factor': 8.0, 'rope_type': 'linear'},
                        'sliding_window': 1024},
        'vision_config': {'model_type': 'siglip_vision_model'}}
  config = hf_config.config_from_hf(hf_json)
  preset = config_lib.get_config('gemma3_4b')
  assert config.vocab_size == 262_208  # the HF text vocabulary has image tokens
  assert checkpoint.architecture_differences(config, preset) == [
      ('vocab_size', 262_208, 262_144)]
  assert checkpoint.architecture_differences(config, preset,
                                             trim_vocab=True) == []
  assert config.attention_pattern == GEMMA3_PATTERN


def test_hf_public_configs_match_presets():
  gemma2_9b = {'model_type': 'gemma2', 'hidden_size': 3584,
               'intermediate_size': 14336, 'num_hidden_layers': 42,
               'num_attention_heads': 16, 'num_key_value_heads': 8,
               'head_dim': 256, 'query_pre_attn_scalar': 256,
               'sliding_window': 4096, 'sliding_window_size': 4096,
               'rope_theta': 10000.0, 'attn_logit_softcapping': 50.0,
               'final_logit_softcapping': 30.0, 'vocab_size': 256000,
               'hidden_activation': 'gelu_pytorch_tanh',
               'torch_dtype': 'float32'}
  config = hf_config.config_from_hf(gemma2_9b)
  assert checkpoint.architecture_differences(
      config, config_lib.get_config('gemma2_9b')) == []
  gemma_2b = {'model_type': 'gemma', 'hidden_size': 2048,
              'intermediate_size': 16384, 'num_hidden_layers': 18,
              'num_attention_heads': 8, 'num_key_value_heads': 1,
              'head_dim': 256, 'hidden_act': 'gelu', 'rope_theta': 10000.0,
              'vocab_size': 256000, 'torch_dtype': 'bfloat16'}
  config = hf_config.config_from_hf(gemma_2b)
  assert checkpoint.architecture_differences(
      config, config_lib.get_config('gemma_2b')) == []
  with pytest.raises(ValueError, match='unsupported rope_type'):
    hf_config.config_from_hf({**gemma_2b, 'rope_scaling': {'rope_type': 'yarn',
                                                            'factor': 4.0}})
  with pytest.raises(ValueError, match='hidden activation'):
    hf_config.config_from_hf({**gemma_2b, 'hidden_act': 'silu'})


def test_hf_mismatch_lists_tensors_and_config_fields(tmp_path):
  config = helpers.CONFIGS['gemma2']
  state = fx.hf_state_dict(helpers.params_for(config), config, 'gemma2')
  del state['model.layers.1.mlp.up_proj.weight']
  state['model.layers.0.self_attn.o_proj.weight'] = np.ones((32, 16),
                                                            np.float32)
  state['model.layers.0.self_attn.q_norm.weight'] = np.ones(8, np.float32)
  state['lm_head.weight'] = state['model.embed_tokens.weight']  # tied: ignored
  hf_json = fx.hf_config(config, 'gemma2')
  hf_json['sliding_window'] = 5
  fx.write_hf_checkpoint(tmp_path, state, hf_json)
  with pytest.raises(checkpoint.CheckpointMismatchError) as info:
    hf.load_hf_checkpoint(str(tmp_path), config)
  error = info.value
  assert error.missing == ['model.layers.1.mlp.up_proj.weight '
                           '(-> layer_1/mlp/gating_einsum)']
  assert error.unexpected == ['model.layers.0.self_attn.q_norm.weight']
  assert error.mis_shaped == [('model.layers.0.self_attn.o_proj.weight '
                               '(-> layer_0/attn/attn_vec_einsum/w)',
                               (32, 16), (32, 32))]
  assert error.config_fields == [('sliding_window_size', 5, 3)]


def test_hf_safetensors_read_and_bad_files_refused(tmp_path):
  config = helpers.CONFIGS['gemma2']
  params = fx.bf16_exact(helpers.params_for(config))
  state = fx.hf_state_dict(params, config, 'gemma2')
  hf_json = fx.hf_config(config, 'gemma2', dtype='bfloat16')
  load = lambda directory: hf.load_hf_checkpoint(str(directory), config)
  # BF16 tensors come as ml_dtypes.bfloat16, kept in a bfloat16 config.
  bf16 = {k: v.astype(ml_dtypes.bfloat16) for k, v in state.items()}
  fx.write_hf_checkpoint(tmp_path / 'bf16', bf16, hf_json)
  _, loaded = hf.load_hf_checkpoint(
      str(tmp_path / 'bf16'), dataclasses.replace(config, param_dtype='bfloat16'))
  assert loaded['embedder']['input_embedding'].dtype == ml_dtypes.bfloat16
  fx.assert_same_params(loaded, params)
  # No safetensors file at all.
  fx.write_hf_checkpoint(tmp_path / 'none', {}, hf_json)
  os.remove(tmp_path / 'none' / 'model.safetensors')
  with pytest.raises(hf.HFCheckpointError, match='neither model.safetensors nor '
                     r'model.safetensors.index.json'):
    load(tmp_path / 'none')
  # A shard named by the index is absent; the index lists a tensor no shard has.
  fx.write_hf_checkpoint(tmp_path / 'sharded', state, hf_json, shards=2)
  shard = tmp_path / 'sharded' / 'model-00002-of-00002.safetensors'
  raw = shard.read_bytes()
  shard.unlink()
  with pytest.raises(hf.HFCheckpointError,
                     match=r"names shards that are not in .*\['model-00002-of-00002.safetensors'\]"):
    load(tmp_path / 'sharded')
  shard.write_bytes(raw)
  index_path = tmp_path / 'sharded' / 'model.safetensors.index.json'
  index = json.loads(index_path.read_text())
  index['weight_map']['model.extra.weight'] = shard.name
  index_path.write_text(json.dumps(index))
  with pytest.raises(ValueError, match=r"in no shard: \['model.extra.weight'\]"):
    load(tmp_path / 'sharded')
  # A truncated file and a file of junk are refused, with the file named.
  fx.write_hf_checkpoint(tmp_path / 'bad', state, hf_json)
  path = tmp_path / 'bad' / 'model.safetensors'
  raw = path.read_bytes()
  for bad in (raw[:-4], b'\xff' * 16):
    path.write_bytes(bad)
    with pytest.raises(ValueError, match=re.escape(
        f'{path}: not a valid safetensors file') + '.*header'):
      load(tmp_path / 'bad')
  # A dtype the loader does not read is named before any tensor is read.
  save_file({**state, 'model.norm.weight': state['model.norm.weight'].astype(
      ml_dtypes.float8_e4m3fn)}, str(path))
  with pytest.raises(ValueError, match="tensor 'model.norm.weight' has "
                     "unsupported dtype 'F8_E4M3'"):
    load(tmp_path / 'bad')


@functools.cache
def _convert_script():
  path = os.path.join(os.path.dirname(__file__), '..', '..', 'scripts',
                      'convert_hf_checkpoint.py')
  spec = importlib.util.spec_from_file_location('convert_hf_checkpoint', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _run(script, *args):
  """`python scripts/convert_hf_checkpoint.py ARGS`, in this process."""
  flags.FLAGS.unparse_flags()
  try:
    script.main(flags.FLAGS(['convert_hf_checkpoint.py', *args]))
  finally:
    flags.FLAGS.unparse_flags()


def test_convert_script(tmp_path):
  config = helpers.CONFIGS['gemma3']
  params = fx.bf16_exact(helpers.params_for(config))
  state = {k: v.astype(ml_dtypes.bfloat16) for k, v in
           fx.hf_state_dict(params, config, 'gemma3_text').items()}
  fx.write_hf_checkpoint(tmp_path / 'hf', state,
                         fx.hf_config(config, 'gemma3_text', dtype='bfloat16'),
                         shards=2)
  script = _convert_script()
  _run(script, '--hf_dir', str(tmp_path / 'hf'), '--out_dir',
       str(tmp_path / 'out'), '--param_dtype', 'float32')
  loaded_config, loaded = checkpoint.load_converted(str(tmp_path / 'out'))
  assert loaded_config.param_dtype == 'float32'
  fx.assert_same_params(loaded, params)
  with pytest.raises(checkpoint.CheckpointMismatchError, match='num_layers'):
    _run(script, '--hf_dir', str(tmp_path / 'hf'), '--out_dir',
         str(tmp_path / 'out2'), '--preset', 'tiny')


def test_convert_script_user_errors_name_the_problem(tmp_path):
  """Every mistake is an errors.UserError (`error: ...` and its exit status from
  the command line) that names the file or flag."""
  config = helpers.CONFIGS['gemma2']
  state = fx.hf_state_dict(helpers.params_for(config), config, 'gemma2')
  fx.write_hf_checkpoint(tmp_path / 'hf', state, fx.hf_config(config, 'gemma2'))
  script = _convert_script()
  out = str(tmp_path / 'out')

  def refused(error, match, *args):
    with pytest.raises(error, match=match) as info:
      _run(script, '--out_dir', out, *args)
    return info.value

  e = refused(hf.HFCheckpointError, 'no such directory', '--hf_dir', str(tmp_path / 'nope'))
  assert isinstance(e, errors.CheckpointError) and e.exit_status == 4
  (tmp_path / 'empty').mkdir()
  refused(hf.HFCheckpointError, 'has no config.json: not a Hugging Face checkpoint',
          '--hf_dir', str(tmp_path / 'empty'))
  (tmp_path / 'empty' / 'config.json').write_text('{"model_type": "gemma2",\n  oops}')
  refused(hf.HFCheckpointError, r'config.json, line 2: not valid JSON',
          '--hf_dir', str(tmp_path / 'empty'))
  (tmp_path / 'empty' / 'config.json').write_text('{"model_type": "llama"}')
  refused(hf.HFCheckpointError, r"config.json: Unsupported Hugging Face model_type 'llama'",
          '--hf_dir', str(tmp_path / 'empty'))
  (tmp_path / 'empty' / 'config.json').write_text('{"model_type": "gemma", "hidden_size": []}')
  refused(hf.HFCheckpointError, 'config.json: not a Gemma config this converter reads',
          '--hf_dir', str(tmp_path / 'empty'))
  e = refused(errors.UsageError, '--param_dtype=int8: expected a float dtype',
              '--hf_dir', str(tmp_path / 'hf'), '--param_dtype', 'int8')
  assert e.exit_status == 2
  (tmp_path / 'out').mkdir()
  (tmp_path / 'out' / 'x').write_text('')
  refused(errors.UsageError, f'--out_dir={out}: expected a new or empty directory',
          '--hf_dir', str(tmp_path / 'hf'))
  (tmp_path / 'out' / 'x').unlink()
  e = refused(checkpoint.CheckpointMismatchError, 'give the matching one, or none',
              '--hf_dir', str(tmp_path / 'hf'), '--preset', 'tiny')
  assert isinstance(e, errors.CheckpointError) and isinstance(e, ValueError)


def test_mismatch_message_lists_at_most_ten_of_a_kind():
  e = checkpoint.CheckpointMismatchError('ckpt', missing=[f't{i}' for i in range(25)],
                                         unexpected=['u'], hint='Do this.')
  lines = str(e).splitlines()
  assert lines[0] == 'Checkpoint ckpt does not match the model config:'
  assert lines[1:12] == [f'  missing: t{i}' for i in range(10)] + [
      '  ... and 15 more missing']
  assert lines[12:] == ['  unexpected: u', 'Do this.'] and len(e.missing) == 25
