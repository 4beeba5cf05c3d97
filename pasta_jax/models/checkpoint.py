"""Gemma params as orbax checkpoints: official Flax (flat) or nested like the model.

* `load_params(dir, config)`: an orbax checkpoint, either in the official FLAT
  layout (`transformer/layer_0/attn/q_einsum` -> {'w': ...}, as released on
  Kaggle) or NESTED like the model (what `save_params` writes), validated
  against `config` from the checkpoint metadata before any tensor is read,
  restored in config.param_dtype (and straight into `shardings` when given).
* `save_converted` / `load_converted`: the params (orbax, nested) and the
  TransformerConfig as JSON in one directory (scripts/convert_hf_checkpoint.py).
* `architecture_differences(found, expected)`: the architecture fields in which
  two configs differ (a checkpoint's config against the run's).

A checkpoint that does not fit the config is refused with one
`CheckpointMismatchError` listing every missing, unexpected and mis-shaped
tensor (and, for Hugging Face, every config field that differs). Hugging Face
checkpoints: `pasta_jax.models.hf`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from pasta_jax import errors
from pasta_jax.models import transformer
from pasta_jax.models.config import AttentionType, TransformerConfig

EMBEDDING = 'embedder/input_embedding'
# Vision parts of multimodal Gemma 3 checkpoints; the text model skips them.
_OFFICIAL_IGNORED = ('SigLiPFromPatches_0/', 'vision_encoder/',
                     'embedder/mm_input_projection',
                     'embedder/mm_soft_embedding_norm')
CONFIG_FILE = 'config.json'
PARAMS_DIR = 'params'


class CheckpointMismatchError(errors.CheckpointError, ValueError):
  """A checkpoint that does not match the config; lists the differences.

  The message lists up to `SHOWN` of each kind (the attributes hold them all).

  Attributes:
    missing: tensors the config needs that the checkpoint lacks.
    unexpected: tensors of the checkpoint the config has no place for.
    mis_shaped: (name, found shape, expected shape) triples.
    config_fields: (field, checkpoint value, config value) triples.
    hint: what would fix it, when known ('' otherwise).
  """

  SHOWN = 10

  def __init__(self, source: str, missing: Sequence[str] = (),
               unexpected: Sequence[str] = (),
               mis_shaped: Sequence[tuple[str, Any, Any]] = (),
               config_fields: Sequence[tuple[str, Any, Any]] = (),
               hint: str = ''):
    self.missing = list(missing)
    self.unexpected = list(unexpected)
    self.mis_shaped = list(mis_shaped)
    self.config_fields = list(config_fields)
    self.hint = hint
    lines = [f'Checkpoint {source} does not match the model config:']

    def listed(kind: str, entries: list[str]) -> None:
      lines.extend(entries[:self.SHOWN])
      if len(entries) > self.SHOWN:
        lines.append(f'  ... and {len(entries) - self.SHOWN} more {kind}')

    listed('config fields', [f'  config field {field}: checkpoint {found!r}, '
                             f'config {expected!r}'
                             for field, found, expected in self.config_fields])
    listed('missing', [f'  missing: {name}' for name in self.missing])
    listed('unexpected', [f'  unexpected: {name}' for name in self.unexpected])
    listed('mis-shaped', [f'  mis-shaped: {name}: checkpoint {tuple(found)}, expected '
                          f'{tuple(expected)}' for name, found, expected in self.mis_shaped])
    if hint:
      lines.append(hint)
    super().__init__('\n'.join(lines))


def flatten(tree: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
  """{'a': {'b': x}} -> {'a/b': x}."""
  flat = {}
  for key, value in tree.items():
    path = f'{prefix}{key}'
    if isinstance(value, Mapping):
      flat.update(flatten(value, path + '/'))
    else:
      flat[path] = value
  return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  """{'a/b': x} -> {'a': {'b': x}}."""
  tree: dict[str, Any] = {}
  for path, value in flat.items():
    *parents, leaf = path.split('/')
    node = tree
    for key in parents:
      node = node.setdefault(key, {})
    node[leaf] = value
  return tree


def _expected_shapes(config: TransformerConfig) -> dict[str, tuple[int, ...]]:
  return {p: tuple(x.shape)
          for p, x in flatten(transformer.param_shapes(config)).items()}


def vocab_hint(config: TransformerConfig, rows: int) -> str:
  """How to load an embedding of `rows` rows, more than config.vocab_size."""
  return (f'The checkpoint embedding has {rows} rows for vocab_size '
          f'{config.vocab_size} (the official Gemma 1/2 Flax checkpoints pad '
          'the 256000-token vocabulary to 256128 rows, multimodal Gemma 3 '
          'checkpoints add image tokens): pass trim_vocab=True to keep the '
          f'first {config.vocab_size} rows, or set vocab_size={rows}.')


def _compare(expected: Mapping[str, tuple[int, ...]],
             found: Mapping[str, tuple[int, ...]], config: TransformerConfig,
             trim_vocab: bool):
  """(missing, unexpected, mis_shaped, hint), comparing path -> shape maps.

  With trim_vocab an embedding with more rows than vocab_size is accepted.
  """
  missing = sorted(set(expected) - set(found))
  unexpected = sorted(set(found) - set(expected))
  mis_shaped, hint = [], ''
  for path in sorted(set(expected) & set(found)):
    want, got = tuple(expected[path]), tuple(found[path])
    if got == want:
      continue
    if (path == EMBEDDING and len(got) == 2 and got[1] == want[1] and
        got[0] > want[0]):
      if trim_vocab:
        continue
      hint = vocab_hint(config, got[0])
    mis_shaped.append((path, got, want))
  return missing, unexpected, mis_shaped, hint


# ----------------------------------------------------------------------------
# Orbax checkpoints (official FLAT layout, or NESTED like the model).


def _flatten_keys(tree: Mapping[str, Any], prefix=()) -> dict[tuple, Any]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(_flatten_keys(value, prefix + (key,)))
    else:
      flat[prefix + (key,)] = value
  return flat


def _model_path(key: tuple[str, ...]) -> str | None:
  """Model param path of a stored key tuple; None for a skipped vision tensor."""
  if len(key) == 2 and key[0].startswith('transformer/'):
    # FLAT: 'transformer/<module path>' -> {'<param>': array}; the MLP's
    # einsums are stored as modules with a 'w' the model does not have.
    module, leaf = key[0][len('transformer/'):], key[1]
    if module.endswith(('/mlp/gating_einsum', '/mlp/linear')) and leaf == 'w':
      path = module
    else:
      path = f'{module}/{leaf}'
  else:
    path = '/'.join(key)
  if path.startswith(_OFFICIAL_IGNORED) or key[0].startswith(_OFFICIAL_IGNORED):
    return None
  return path


def _orbax_metadata(path: str) -> dict[tuple, Any]:
  """Stored key tuple -> array metadata (with .shape) of an orbax checkpoint."""
  metadata = ocp.PyTreeCheckpointer().metadata(path)
  metadata = getattr(metadata, 'item_metadata', metadata)
  metadata = getattr(metadata, 'tree', metadata)
  if not isinstance(metadata, Mapping):
    raise ValueError(f'{path}: not an orbax PyTree checkpoint of a dict')
  return _flatten_keys(metadata)


def load_params(path: str, config: TransformerConfig, *,
                trim_vocab: bool = False, shardings=None):
  """Loads params from an orbax checkpoint directory (official FLAT or NESTED).

  Args:
    path: the checkpoint directory (the one holding `_METADATA`).
    config: the architecture the checkpoint must match.
    trim_vocab: accept an embedding with more rows than config.vocab_size and
      keep the first vocab_size rows (the official Gemma 1/2 checkpoints have
      256128 rows for a 256000-token vocabulary).
    shardings: optional tree of `jax.sharding.Sharding` structured like the
      params (e.g. `sharding.param_shardings`); each array is restored straight
      into it. Default: the first local device.

  Returns:
    The nested param tree, arrays in config.param_dtype.

  Raises:
    CheckpointMismatchError: names or shapes differ from `config`'s.
  """
  path = os.path.abspath(path)
  stored = _orbax_metadata(path)
  # A nested tree may come wrapped as {'params': tree}.
  wrapped = {k[0] for k in stored} == {'params'}
  to_stored: dict[str, tuple] = {}
  duplicates, skipped = [], []
  for key in stored:
    model_path = _model_path(key[1:] if wrapped else key)
    if model_path is None:
      skipped.append('/'.join(key))
    elif model_path in to_stored:
      duplicates.append('/'.join(key))
    else:
      to_stored[model_path] = key
  if skipped:
    logging.info('%s: skipping %d non-text tensors', path, len(skipped))
  expected = _expected_shapes(config)
  found = {p: tuple(stored[k].shape) for p, k in to_stored.items()}
  missing, unexpected, mis_shaped, hint = _compare(expected, found, config,
                                                   trim_vocab)
  unexpected += duplicates
  if any('stacked_layers' in p for p in unexpected):
    hint += (' The checkpoint stores layers stacked by attention type '
             '(stacked_layers/...), a layout this loader does not read.')
  if missing or unexpected or mis_shaped:
    raise CheckpointMismatchError(path, missing, unexpected, mis_shaped,
                                  hint=hint.strip())

  dtype = jnp.dtype(config.param_dtype)
  if shardings is None:
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    flat_shardings = {p: device for p in expected}
  else:
    flat_shardings = flatten(shardings)
    if set(flat_shardings) != set(expected):
      raise ValueError('shardings must be structured like the params; differs '
                       f'at {sorted(set(flat_shardings) ^ set(expected))}')
  item, restore_args = {}, {}
  for model_path, key in to_stored.items():
    shape = expected[model_path]
    sharding = flat_shardings[model_path]
    node_item, node_args = item, restore_args
    for k in key[:-1]:
      node_item = node_item.setdefault(k, {})
      node_args = node_args.setdefault(k, {})
    node_item[key[-1]] = jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
    # strict=False lets orbax keep the first rows of a larger embedding table
    # (trim_vocab, checked above); every other shape matched exactly.
    node_args[key[-1]] = ocp.ArrayRestoreArgs(
        sharding=sharding, global_shape=shape, dtype=dtype,
        strict=found[model_path] == shape)
  # Skipped (vision) tensors need orbax's partial restore.
  partial = {'partial_restore': True} if skipped else {}
  restored = ocp.PyTreeCheckpointer().restore(
      path, args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args,
                                        **partial))
  flat_restored = _flatten_keys(restored)
  return unflatten({p: flat_restored[k] for p, k in to_stored.items()})


def save_params(path: str, params) -> None:
  """Writes params (nested, like the model) as an orbax checkpoint."""
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.abspath(path), params)
  checkpointer.wait_until_finished()


def save_converted(out_dir: str, params, config: TransformerConfig) -> None:
  """`out_dir/params` (orbax, nested) and `out_dir/config.json`."""
  os.makedirs(out_dir, exist_ok=True)
  save_params(os.path.join(out_dir, PARAMS_DIR), params)
  with open(os.path.join(out_dir, CONFIG_FILE), 'w') as f:
    f.write(config.to_json() + '\n')


def read_config(out_dir: str) -> TransformerConfig:
  """The TransformerConfig of `out_dir/config.json` (`save_converted`).

  Raises:
    CheckpointError: the file is missing or not a valid config (names the file).
  """
  path = os.path.join(out_dir, CONFIG_FILE)
  try:
    with open(path, encoding='utf-8') as f:
      return TransformerConfig.from_json(f.read())
  except FileNotFoundError:
    raise errors.CheckpointError(f'{path} is missing') from None
  except (ValueError, TypeError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
    raise errors.CheckpointError(f'{path} is not a valid model config: {e}') from None


def load_converted(out_dir: str, *, shardings=None):
  """(config, params) from a directory written by `save_converted`."""
  config = read_config(out_dir)
  params = load_params(os.path.join(out_dir, PARAMS_DIR), config,
                       shardings=shardings)
  return config, params


def nonfinite_paths(tree: Any) -> list[str]:
  """'/'-joined paths of the floating-point arrays of `tree` that hold a NaN or an Inf.

  One jitted reduction per array; works on sharded (also multi-host) arrays.
  """
  leaves = [(path, x) for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]
            if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
  if not leaves:
    return []
  finite = jax.jit(lambda xs: [jnp.all(jnp.isfinite(x)) for x in xs])(
      [x for _, x in leaves])
  return [jax.tree_util.keystr(path, simple=True, separator='/')
          for (path, _), ok in zip(leaves, finite)
          if not bool(np.asarray(ok.addressable_data(0)))]


# ----------------------------------------------------------------------------
# Configs of checkpoints.

_NON_ARCHITECTURE = ('dtype', 'param_dtype', 'remat', 'attention_pattern',
                     'query_pre_attn_scalar')


def architecture_differences(found: TransformerConfig,
                             expected: TransformerConfig, *,
                             trim_vocab: bool = False):
  """(field, found, expected) for every architecture field that differs."""
  diffs = []
  for field in dataclasses.fields(TransformerConfig):
    name = field.name
    if name in _NON_ARCHITECTURE:
      continue
    a, b = getattr(found, name), getattr(expected, name)
    if name == 'vocab_size' and trim_vocab and a >= b:
      continue
    if name == 'sliding_window_size' and (
        AttentionType.LOCAL_SLIDING not in expected.attention_types and
        AttentionType.LOCAL_SLIDING not in found.attention_types):
      continue
    if a != b:
      diffs.append((name, a, b))
  for name in ('attention_types', 'query_scale'):
    a, b = getattr(found, name), getattr(expected, name)
    if a != b:
      diffs.append((name, a, b))
  return diffs

