"""Orbax checkpoints: the official FLAT layout, written here from the format's
definition, and the NESTED layout load to the same params and logits."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from pasta_jax.models import checkpoint
from tests.models import checkpoint_fixtures as fx
from tests.models import helpers

# Official checkpoints: Gemma 1 (MHA with qkv_einsum, MQA), 2 and 3.
OFFICIAL = ['gemma1_mha', 'gemma1_mqa', 'gemma2', 'gemma3']


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
  fx.assert_same_params(loaded, params)
  # The loaded params are committed to the device and the fresh ones are not,
  # so jit compiles the model twice (the programs differ in their sharding
  # annotations): equal logits to float rounding. The params are equal exactly.
  np.testing.assert_allclose(fx.logits(config, loaded), fx.logits(config, params),
                             rtol=1e-5, atol=1e-5)


def test_official_checkpoint_bf16_into_float32_and_trim_vocab(tmp_path):
  config = helpers.CONFIGS['gemma1_mqa']
  params = fx.bf16_exact(helpers.params_for(config))
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
  fx.assert_same_params(loaded, params)


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
  fx.assert_same_params(loaded, params)
