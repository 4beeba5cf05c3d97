"""Parameter trees of every preset: a checked-in snapshot of every path and
shape (a renamed or reshaped parameter fails here), parameter counts, and
logical axis names on every weight.

Regenerate the snapshot after an intended change with
    PASTA_UPDATE_PARAM_SNAPSHOT=1 pytest tests/models/test_params.py
"""

import json
import os

import jax
import pytest

from pasta_jax.models import checkpoint
from pasta_jax.models import config as config_lib
from pasta_jax.models import cache as cache_lib
from pasta_jax.models import transformer

SNAPSHOT = os.path.join(os.path.dirname(__file__), 'param_paths.json')

# Exact counts of the text decoders (embedding included once: it is tied).
COUNTS = {
    'gemma_2b': 2_506_172_416,
    'gemma_7b': 8_537_680_896,
    'gemma2_2b': 2_614_341_888,
    'gemma2_9b': 9_241_705_984,
    'gemma2_27b': 27_227_128_320,
    'gemma3_1b': 999_885_952,
    'gemma3_4b': 3_880_099_328,
    'gemma3_12b': 11_765_788_416,
    'gemma3_27b': 27_009_002_240,
    'tiny': 1_051_008,
    'small': 13_772_928,
    'base100m': 99_916_032,
}
# Published sizes (billions) of the public models; Gemma 3 4B/12B/27B are
# published with their ~0.4B vision encoder, which is not part of this model.
PUBLISHED = {'gemma_2b': 2.51, 'gemma_7b': 8.54, 'gemma2_2b': 2.61,
             'gemma2_9b': 9.24, 'gemma2_27b': 27.2, 'gemma3_1b': 1.0,
             'gemma3_4b': 4.3 - 0.42, 'gemma3_12b': 12.2 - 0.42,
             'gemma3_27b': 27.4 - 0.42}


def _paths(name):
  shapes = transformer.param_shapes(config_lib.PRESETS[name])
  return {path: list(x.shape) for path, x in
          sorted(checkpoint.flatten(shapes).items())}


def _to_json(snapshot):
  """One line per parameter: reviewable diffs."""
  presets = []
  for name, paths in snapshot.items():
    lines = ',\n'.join(f'    {json.dumps(p)}: {json.dumps(s)}'
                       for p, s in paths.items())
    presets.append(f'  {json.dumps(name)}: {{\n{lines}\n  }}')
  return '{\n' + ',\n'.join(presets) + '\n}\n'


def test_param_paths_match_snapshot():
  current = {name: _paths(name) for name in sorted(config_lib.PRESETS)}
  if os.environ.get('PASTA_UPDATE_PARAM_SNAPSHOT'):
    with open(SNAPSHOT, 'w') as f:
      f.write(_to_json(current))
  with open(SNAPSHOT) as f:
    snapshot = json.load(f)
  assert sorted(current) == sorted(snapshot)
  for name in current:
    added = sorted(set(current[name]) - set(snapshot[name]))
    removed = sorted(set(snapshot[name]) - set(current[name]))
    reshaped = sorted(p for p in set(current[name]) & set(snapshot[name])
                      if current[name][p] != snapshot[name][p])
    assert not (added or removed or reshaped), (
        f'{name}: added {added[:5]}, removed {removed[:5]}, reshaped '
        f'{reshaped[:5]}')


@pytest.mark.parametrize('name', sorted(COUNTS))
def test_param_counts(name):
  count = transformer.count_params(config_lib.PRESETS[name])
  assert count == COUNTS[name]
  if name in PUBLISHED:
    assert abs(count / 1e9 - PUBLISHED[name]) / PUBLISHED[name] < 0.02


def test_official_names_and_shapes_gemma2_9b():
  paths = _paths('gemma2_9b')
  assert paths['embedder/input_embedding'] == [256_000, 3584]
  assert paths['layer_0/attn/q_einsum/w'] == [16, 3584, 256]
  assert paths['layer_0/attn/kv_einsum/w'] == [2, 8, 3584, 256]
  assert paths['layer_0/attn/attn_vec_einsum/w'] == [16, 256, 3584]
  assert paths['layer_0/mlp/gating_einsum'] == [2, 14_336, 3584]  # transposed
  assert paths['layer_0/mlp/linear'] == [14_336, 3584]
  assert paths['layer_41/post_ffw_norm/scale'] == [3584]
  assert _paths('gemma2_2b')['layer_0/mlp/gating_einsum'] == [2, 2304, 9216]
  assert _paths('gemma_7b')['layer_0/attn/qkv_einsum/w'] == [3, 16, 3072, 256]
  assert _paths('gemma3_1b')['layer_0/attn/_query_norm/scale'] == [256]


def test_every_weight_has_logical_axes():
  config = config_lib.PRESETS['gemma3_4b']
  axes = transformer.logical_axes(config)
  shapes = transformer.param_shapes(config)
  is_spec = lambda x: isinstance(x, jax.sharding.PartitionSpec)
  flat_axes = {path: tuple(spec) for path, spec in checkpoint.flatten(
      jax.tree.map(lambda s: s, axes, is_leaf=is_spec)).items()}
  flat_shapes = checkpoint.flatten(shapes)
  assert set(flat_axes) == set(flat_shapes)
  for path, spec in flat_axes.items():
    assert len(spec) == len(flat_shapes[path].shape), path
    assert any(name is not None for name in spec), path
  assert flat_axes['embedder/input_embedding'] == ('vocab', 'embed')
  assert flat_axes['layer_0/attn/kv_einsum/w'] == (None, 'kv_heads', 'embed',
                                                   'head_dim')
  assert flat_axes['layer_0/mlp/gating_einsum'] == (None, 'mlp', 'embed')
  cache_axes = cache_lib.cache_logical_axes(config)['layer_3']
  assert tuple(cache_axes.k) == ('batch', 'kv_heads', 'head_dim', 'cache_length')
  assert tuple(cache_axes.v) == ('batch', 'kv_heads', 'cache_length', 'head_dim')
  assert tuple(cache_axes.positions) == ('batch', 'cache_length')
