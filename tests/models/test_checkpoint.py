"""Checkpoints: official orbax FLAT layout and Hugging Face safetensors, written
here from the formats' definitions, load to the same params and logits."""

import dataclasses
import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from pasta_jax.models import checkpoint
from pasta_jax.models import config as config_lib
from pasta_jax.models import safetensors_reader
from pasta_jax.models.config import GEMMA3_PATTERN
from tests.models import checkpoint_fixtures as fx
from tests.models import helpers

# Official checkpoints: Gemma 1 (MHA with qkv_einsum, MQA), 2 and 3.
OFFICIAL = ['gemma1_mha', 'gemma1_mqa', 'gemma2', 'gemma3']
# Hugging Face family of each test config.
FAMILY = {'gemma1_mha': 'gemma', 'gemma1_mqa': 'gemma', 'gemma2': 'gemma2',
          'gemma2_transposed': 'gemma2', 'gemma3': 'gemma3_text'}


def _logits(config, params):
  tokens = helpers.tokens_for(config, 1, 8, seed=4)
  positions = np.arange(8, dtype=np.int32)[None]
  meta = helpers.causal(1, 8)
  return helpers.forward(config, params, tokens, positions, (meta, meta))


def _assert_same_params(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(
      np.asarray(x, np.float32), np.asarray(y, np.float32)), a, b)


def _bf16_exact(params):
  """float32 params whose values are exactly representable in bfloat16."""
  return jax.tree.map(
      lambda x: np.asarray(x).astype(ml_dtypes.bfloat16).astype(np.float32),
      params)


@pytest.mark.parametrize('name', OFFICIAL)
def test_official_flat_orbax_checkpoint(tmp_path, name):
  config = helpers.CONFIGS[name]
  params = helpers.params_for(config)
  extra = {}
  if name == 'gemma3':  # multimodal checkpoints also hold vision weights
    extra = {'SigLiPFromPatches_0/siglip_encoder/embedding':
             {'kernel': np.ones((2, 3), np.float32)},
             'transformer/embedder': {'mm_input_projection':
                                      np.ones((4, 32), np.float32)}}
  flat = fx.official_flat(jax.tree.map(np.asarray, params), extra)
  assert 'transformer/layer_0/mlp/gating_einsum' in flat
  fx.save_orbax(tmp_path / 'ckpt', flat)
  loaded = checkpoint.load_params(str(tmp_path / 'ckpt'), config)
  _assert_same_params(loaded, params)
  # The loaded params are committed to the device and the fresh ones are not,
  # so jit compiles the model twice (the programs differ in their sharding
  # annotations): equal logits to float rounding. The params are equal exactly.
  np.testing.assert_allclose(_logits(config, loaded), _logits(config, params),
                             rtol=1e-5, atol=1e-5)


def test_official_checkpoint_bf16_into_float32_and_trim_vocab(tmp_path):
  config = helpers.CONFIGS['gemma1_mqa']
  params = _bf16_exact(helpers.params_for(config))
  stored = jax.tree.map(lambda x: x.astype(ml_dtypes.bfloat16), params)
  # The official Gemma 1/2 tables carry padding rows beyond the vocabulary.
  padded = np.concatenate([stored['embedder']['input_embedding'],
                           np.ones((8, 32), ml_dtypes.bfloat16)])
  stored['embedder']['input_embedding'] = padded
  fx.save_orbax(tmp_path / 'ckpt', fx.official_flat(stored))
  with pytest.raises(checkpoint.CheckpointMismatchError,
                     match='trim_vocab=True') as info:
    checkpoint.load_params(str(tmp_path / 'ckpt'), config)
  assert info.value.mis_shaped == [('embedder/input_embedding', (72, 32),
                                    (64, 32))]
  loaded = checkpoint.load_params(str(tmp_path / 'ckpt'), config,
                                  trim_vocab=True)
  assert loaded['layer_0']['attn']['q_einsum']['w'].dtype == jnp.float32
  _assert_same_params(loaded, params)


def test_mismatch_lists_every_difference(tmp_path):
  config = helpers.CONFIGS['gemma2']
  flat = fx.official_flat(jax.tree.map(np.asarray, helpers.params_for(config)))
  del flat['transformer/layer_1/post_ffw_norm']
  flat['transformer/layer_1/attn/_query_norm'] = {'scale': np.ones(8, np.float32)}
  flat['transformer/layer_0/mlp/linear']['w'] = np.ones((32, 48), np.float32)
  flat['transformer/layer_7/pre_ffw_norm'] = {'scale': np.ones(32, np.float32)}
  fx.save_orbax(tmp_path / 'ckpt', flat)
  with pytest.raises(checkpoint.CheckpointMismatchError) as info:
    checkpoint.load_params(str(tmp_path / 'ckpt'), config)
  error = info.value
  assert isinstance(error, ValueError)
  assert error.missing == ['layer_1/post_ffw_norm/scale']
  assert error.unexpected == ['layer_1/attn/_query_norm/scale',
                              'layer_7/pre_ffw_norm/scale']
  assert error.mis_shaped == [('layer_0/mlp/linear', (32, 48), (48, 32))]
  for text in ('missing: layer_1/post_ffw_norm/scale',
               'unexpected: layer_7/pre_ffw_norm/scale',
               'mis-shaped: layer_0/mlp/linear: checkpoint (32, 48), expected '
               '(48, 32)'):
    assert text in str(error)


def test_nested_save_load_roundtrip_and_converted_dir(tmp_path):
  config = helpers.CONFIGS['gemma3']
  params = helpers.params_for(config)
  checkpoint.save_converted(str(tmp_path / 'out'), params, config)
  loaded_config, loaded = checkpoint.load_converted(str(tmp_path / 'out'))
  assert loaded_config == config
  _assert_same_params(loaded, params)


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
  params = _bf16_exact(helpers.params_for(config))
  state = fx.hf_state_dict(params, config, family)
  state = {k: v.astype(jnp.dtype(dtype)) for k, v in state.items()}
  if family == 'gemma3_text':
    # Half the tensors stay float32: a checkpoint may mix dtypes.
    state = {k: (v.astype(np.float32) if i % 2 else v)
             for i, (k, v) in enumerate(sorted(state.items()))}
  hf = fx.hf_config(config, family, dtype=dtype)
  fx.write_hf_checkpoint(tmp_path, state, hf, shards=shards)
  if shards > 1:
    assert os.path.exists(tmp_path / 'model.safetensors.index.json')
  # With the architecture's own config (float32 params) ...
  got_config, loaded = checkpoint.load_hf_checkpoint(str(tmp_path), config)
  assert got_config == config
  if dtype == 'float16':
    params = jax.tree.map(lambda x: x.astype(np.float16).astype(np.float32),
                          params)
  _assert_same_params(loaded, params)
  np.testing.assert_array_equal(_logits(config, loaded), _logits(config, params))
  # ... and with the config derived from config.json alone. Hugging Face does
  # not record the gating layout: the family default applies (transposed for
  # Gemma 2 and 3), and the logits are the same either way.
  derived, loaded2 = checkpoint.load_hf_checkpoint(str(tmp_path))
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
  np.testing.assert_allclose(_logits(derived32, loaded2),
                             _logits(config, params), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('name', ['gemma2', 'gemma3'])
def test_hf_config_spellings_agree(name):
  config = helpers.CONFIGS[name]
  family = FAMILY[name]
  old = checkpoint.config_from_hf(fx.hf_config(config, family, '4.x'))
  new = checkpoint.config_from_hf(fx.hf_config(config, family, '5.x'))
  assert old == new
  assert old.attention_types == config.attention_types
  assert (old.global_rope_base, old.local_rope_base,
          old.global_rope_scale_factor) == (config.global_rope_base,
                                            config.local_rope_base,
                                            config.global_rope_scale_factor)


def test_hf_multimodal_gemma3_config_uses_text_defaults():
  # The gemma-3-4b config.json lists few text keys; the rest are defaults.
  hf = {'model_type': 'gemma3', 'torch_dtype': 'bfloat16',
        'text_config': {'model_type': 'gemma3_text', 'hidden_size': 2560,
                        'intermediate_size': 10240, 'num_hidden_layers': 34,
                        'rope_scaling': {'factor': 8.0, 'rope_type': 'linear'},
                        'sliding_window': 1024},
        'vision_config': {'model_type': 'siglip_vision_model'}}
  config = checkpoint.config_from_hf(hf)
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
  config = checkpoint.config_from_hf(gemma2_9b)
  assert checkpoint.architecture_differences(
      config, config_lib.get_config('gemma2_9b')) == []
  gemma_2b = {'model_type': 'gemma', 'hidden_size': 2048,
              'intermediate_size': 16384, 'num_hidden_layers': 18,
              'num_attention_heads': 8, 'num_key_value_heads': 1,
              'head_dim': 256, 'hidden_act': 'gelu', 'rope_theta': 10000.0,
              'vocab_size': 256000, 'torch_dtype': 'bfloat16'}
  config = checkpoint.config_from_hf(gemma_2b)
  assert checkpoint.architecture_differences(
      config, config_lib.get_config('gemma_2b')) == []
  with pytest.raises(ValueError, match='unsupported rope_type'):
    checkpoint.config_from_hf({**gemma_2b, 'rope_scaling': {'rope_type': 'yarn',
                                                            'factor': 4.0}})
  with pytest.raises(ValueError, match='hidden activation'):
    checkpoint.config_from_hf({**gemma_2b, 'hidden_act': 'silu'})


def test_hf_mismatch_lists_tensors_and_config_fields(tmp_path):
  config = helpers.CONFIGS['gemma2']
  state = fx.hf_state_dict(helpers.params_for(config), config, 'gemma2')
  del state['model.layers.1.mlp.up_proj.weight']
  state['model.layers.0.self_attn.o_proj.weight'] = np.ones((32, 16),
                                                            np.float32)
  state['model.layers.0.self_attn.q_norm.weight'] = np.ones(8, np.float32)
  state['lm_head.weight'] = state['model.embed_tokens.weight']  # tied: ignored
  hf = fx.hf_config(config, 'gemma2')
  hf['sliding_window'] = 5
  fx.write_hf_checkpoint(tmp_path, state, hf)
  with pytest.raises(checkpoint.CheckpointMismatchError) as info:
    checkpoint.load_hf_checkpoint(str(tmp_path), config)
  error = info.value
  assert error.missing == ['model.layers.1.mlp.up_proj.weight '
                           '(-> layer_1/mlp/gating_einsum)']
  assert error.unexpected == ['model.layers.0.self_attn.q_norm.weight']
  assert error.mis_shaped == [('model.layers.0.self_attn.o_proj.weight '
                               '(-> layer_0/attn/attn_vec_einsum/w)',
                               (32, 16), (32, 32))]
  assert error.config_fields == [('sliding_window_size', 5, 3)]


def test_safetensors_reader_rejects_bad_files(tmp_path):
  fx.write_safetensors(tmp_path / 'ok.safetensors',
                       {'a': np.arange(6, dtype=np.float32).reshape(2, 3),
                        'b': np.ones(4, ml_dtypes.bfloat16)})
  tensors = safetensors_reader.read_file(str(tmp_path / 'ok.safetensors'))
  np.testing.assert_array_equal(tensors['a'], np.arange(6).reshape(2, 3))
  assert tensors['b'].dtype == ml_dtypes.bfloat16
  raw = (tmp_path / 'ok.safetensors').read_bytes()
  (tmp_path / 'short.safetensors').write_bytes(raw[:-4])
  with pytest.raises(safetensors_reader.SafetensorsError, match='data_offsets'):
    safetensors_reader.read_file(str(tmp_path / 'short.safetensors'))
  header = json.dumps({'x': {'dtype': 'F8_E4M3', 'shape': [1],
                             'data_offsets': [0, 1]}}).encode()
  (tmp_path / 'f8.safetensors').write_bytes(
      len(header).to_bytes(8, 'little') + header + b'\0')
  with pytest.raises(safetensors_reader.SafetensorsError, match='unsupported'):
    safetensors_reader.read_file(str(tmp_path / 'f8.safetensors'))
  (tmp_path / 'junk.safetensors').write_bytes(b'\xff' * 16)
  with pytest.raises(safetensors_reader.SafetensorsError, match='header'):
    safetensors_reader.read_file(str(tmp_path / 'junk.safetensors'))


def _convert_script():
  path = os.path.join(os.path.dirname(__file__), '..', '..', 'scripts',
                      'convert_hf_checkpoint.py')
  spec = importlib.util.spec_from_file_location('convert_hf_checkpoint', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_convert_script(tmp_path):
  config = helpers.CONFIGS['gemma3']
  params = _bf16_exact(helpers.params_for(config))
  state = {k: v.astype(ml_dtypes.bfloat16) for k, v in
           fx.hf_state_dict(params, config, 'gemma3_text').items()}
  fx.write_hf_checkpoint(tmp_path / 'hf', state,
                         fx.hf_config(config, 'gemma3_text', dtype='bfloat16'),
                         shards=2)
  script = _convert_script()
  script.main(['--hf_dir', str(tmp_path / 'hf'), '--out_dir',
               str(tmp_path / 'out'), '--param_dtype', 'float32'])
  loaded_config, loaded = checkpoint.load_converted(str(tmp_path / 'out'))
  assert loaded_config.param_dtype == 'float32'
  _assert_same_params(loaded, params)
  with pytest.raises(checkpoint.CheckpointMismatchError, match='num_layers'):
    script.main(['--hf_dir', str(tmp_path / 'hf'), '--out_dir',
                 str(tmp_path / 'out2'), '--preset', 'tiny'])
