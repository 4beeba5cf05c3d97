"""Writers of test checkpoints in the official orbax FLAT layout, and the Hugging
Face safetensors layout's (`pasta_jax.standins`, files by the safetensors
package's writer). Independent of the loaders: the inverse transforms are written
out from the parameter layouts in docs/models.md."""

import os

import jax
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp

from pasta_jax.standins import hf_config, hf_state_dict, write_hf_checkpoint  # noqa: F401
from tests.models import helpers


def _leaves(tree, prefix=()):
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _leaves(value, prefix + (key,))
    else:
      yield prefix + (key,), np.asarray(value)


def official_flat(params, extra=None):
  """{'transformer/<module>': {'<param>': array}}, MLP einsums under 'w'."""
  flat = {}
  for path, value in _leaves(params):
    if path[-2] == 'mlp':  # mlp/gating_einsum, mlp/linear are modules with 'w'
      module, leaf = path, 'w'
    else:
      module, leaf = path[:-1], path[-1]
    flat.setdefault('transformer/' + '/'.join(module), {})[leaf] = value
  for key, value in (extra or {}).items():
    flat.setdefault(key, {}).update(value)
  return flat


def save_orbax(path, tree):
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.abspath(path), tree)
  checkpointer.wait_until_finished()


def logits(config, params):
  """Logits of a causal forward pass over 8 tokens."""
  tokens = helpers.tokens_for(config, 1, 8, seed=4)
  positions = np.arange(8, dtype=np.int32)[None]
  meta = helpers.causal(1, 8)
  return helpers.forward(config, params, tokens, positions, (meta, meta))


def assert_same_params(a, b):
  """The same tree, with equal values in float32."""
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(
      np.asarray(x, np.float32), np.asarray(y, np.float32)), a, b)


def bf16_exact(params):
  """float32 params whose values are exactly representable in bfloat16."""
  return jax.tree.map(
      lambda x: np.asarray(x).astype(ml_dtypes.bfloat16).astype(np.float32),
      params)
