"""Hugging Face Gemma / Gemma 2 / Gemma 3 (text) checkpoints -> the model's params.

* `load_hf_checkpoint(dir, config=None)`: `config.json` + safetensors (one
  `model.safetensors`, or the shards named by `model.safetensors.index.json`),
  converted to the model's tree; without a config it is derived from
  `config.json` (`hf_config.config_from_hf`). Tensors are read one at a time
  with `safetensors.safe_open`, when their param is converted.
* `convert_hf_tensors(tensors, config, family)`: the renames, reshapes and
  transposes from Hugging Face tensors to the model's params.

A checkpoint that does not fit the config is refused with one
`checkpoint.CheckpointMismatchError` listing every missing, unexpected and
mis-shaped tensor and every config field that differs; one that cannot be read
(no directory, no or malformed config.json, an unsupported architecture, missing
or damaged safetensors files) with `HFCheckpointError` naming the file. Both are
`errors.CheckpointError`s (and ValueErrors).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from typing import Any, Callable, Iterator, Mapping

import jax.numpy as jnp
# Imported for its side effect too: numpy then knows the dtype name 'bfloat16',
# which safetensors' numpy reader asks for on BF16 tensors.
import ml_dtypes  # noqa: F401  pylint: disable=unused-import
import numpy as np
import safetensors

from pasta_jax.models import checkpoint
from pasta_jax.models import hf_config
from pasta_jax.models.checkpoint import (EMBEDDING, CheckpointMismatchError,
                                         architecture_differences)
from pasta_jax.models.config import TransformerConfig
from pasta_jax.models.hf_config import HFCheckpointError

CONFIG_FILE = 'config.json'
SINGLE_FILE = 'model.safetensors'
INDEX_FILE = 'model.safetensors.index.json'
# safetensors dtypes the loader reads (BF16 as ml_dtypes.bfloat16).
_DTYPES = ('F64', 'F32', 'F16', 'BF16', 'I64', 'I32', 'I16', 'I8', 'U8', 'BOOL')
_IGNORED_PREFIXES = ('vision_tower.', 'multi_modal_projector.',
                     'model.vision_tower.', 'model.multi_modal_projector.')
_PREFIXES = ('model.', 'language_model.model.', 'model.language_model.')


@dataclasses.dataclass(frozen=True)
class _Rule:
  """One model param made from Hugging Face tensors."""

  target: str
  sources: tuple[str, ...]
  shapes: tuple[tuple[int, ...], ...]
  convert: Callable[..., np.ndarray]


def _hf_rules(config: TransformerConfig, family: str, prefix: str):
  n, k, h = config.num_heads, config.num_kv_heads, config.head_dim
  d, f, v = config.embed_dim, config.hidden_dim, config.vocab_size
  as_is = lambda x: x
  # HF linear weights are (out, in).
  q_heads = lambda w: w.reshape(n, h, d).transpose(0, 2, 1)  # -> (N, D, H)
  kv_heads = lambda w: w.reshape(k, h, d).transpose(0, 2, 1)  # -> (K, D, H)
  rules = [
      _Rule(EMBEDDING, (f'{prefix}embed_tokens.weight',), ((v, d),), as_is),
      _Rule('final_norm/scale', (f'{prefix}norm.weight',), ((d,),), as_is),
  ]
  for i in range(config.num_layers):
    hf, ours = f'{prefix}layers.{i}.', f'layer_{i}/'
    attn = f'{hf}self_attn.'
    qkv_names = tuple(f'{attn}{p}_proj.weight' for p in 'qkv')
    qkv_shapes = ((n * h, d), (k * h, d), (k * h, d))
    if config.use_qkv_einsum:
      rules.append(_Rule(
          f'{ours}attn/qkv_einsum/w', qkv_names, qkv_shapes,
          lambda q, k_, v_: np.stack([q_heads(q), q_heads(k_), q_heads(v_)])))
    else:
      rules.append(_Rule(f'{ours}attn/q_einsum/w', qkv_names[:1],
                         qkv_shapes[:1], q_heads))
      rules.append(_Rule(
          f'{ours}attn/kv_einsum/w', qkv_names[1:], qkv_shapes[1:],
          lambda k_, v_: np.stack([kv_heads(k_), kv_heads(v_)])))
    rules.append(_Rule(
        f'{ours}attn/attn_vec_einsum/w', (f'{attn}o_proj.weight',),
        ((d, n * h),), lambda w: w.T.reshape(n, h, d)))
    if config.use_qk_norm:
      rules.append(_Rule(f'{ours}attn/_query_norm/scale',
                         (f'{attn}q_norm.weight',), ((h,),), as_is))
      rules.append(_Rule(f'{ours}attn/_key_norm/scale',
                         (f'{attn}k_norm.weight',), ((h,),), as_is))
    norms = [('input_layernorm', 'pre_attention_norm')]
    if family == 'gemma':
      # Gemma 1 HF calls the pre-MLP norm "post_attention_layernorm".
      norms.append(('post_attention_layernorm', 'pre_ffw_norm'))
    else:
      norms.append(('pre_feedforward_layernorm', 'pre_ffw_norm'))
      if config.use_post_attn_norm:
        norms.append(('post_attention_layernorm', 'post_attention_norm'))
      if config.use_post_ffw_norm:
        norms.append(('post_feedforward_layernorm', 'post_ffw_norm'))
    for hf_name, our_name in norms:
      rules.append(_Rule(f'{ours}{our_name}/scale', (f'{hf}{hf_name}.weight',),
                         ((d,),), as_is))
    mlp = f'{hf}mlp.'
    if config.transpose_gating_einsum:
      gating = lambda g, u: np.stack([g, u])  # (2, F, D)
    else:
      gating = lambda g, u: np.stack([g.T, u.T])  # (2, D, F)
    rules.append(_Rule(
        f'{ours}mlp/gating_einsum',
        (f'{mlp}gate_proj.weight', f'{mlp}up_proj.weight'), ((f, d), (f, d)),
        gating))
    rules.append(_Rule(f'{ours}mlp/linear', (f'{mlp}down_proj.weight',),
                       ((d, f),), lambda w: w.T))
  return rules


def _hf_ignored(name: str) -> bool:
  return (name.startswith(_IGNORED_PREFIXES) or name == 'lm_head.weight' or
          name.endswith('rotary_emb.inv_freq'))


def convert_hf_tensors(tensors: Mapping[str, np.ndarray],
                       config: TransformerConfig, family: str, *,
                       trim_vocab: bool = False, source: str = 'checkpoint',
                       config_fields=()):
  """Model params (numpy, config.param_dtype) from Hugging Face tensors.

  `family` is the Hugging Face model_type ('gemma', 'gemma2', 'gemma3_text'),
  which fixes the norm naming. `lm_head.weight` is ignored (tied, as in HF),
  and so are vision tensors of multimodal checkpoints.
  """
  if family not in hf_config.FAMILIES:
    raise HFCheckpointError(f'Unknown Hugging Face family {family!r}; known: '
                            f'{list(hf_config.FAMILIES)}')
  prefix = next((p for p in _PREFIXES if f'{p}embed_tokens.weight' in tensors),
                'model.')
  dtype = jnp.dtype(config.param_dtype)
  missing, mis_shaped, used, hint = [], [], set(), ''
  params = {}
  for rule in _hf_rules(config, family, prefix):
    arrays = []
    for name, want in zip(rule.sources, rule.shapes):
      if name not in tensors:
        missing.append(f'{name} (-> {rule.target})')
        continue
      used.add(name)
      array = tensors[name]  # Looked up once: a lazy mapping reads it here.
      got = tuple(array.shape)
      if got != want:
        if (rule.target == EMBEDDING and len(got) == 2 and got[1] == want[1]
            and got[0] > want[0]):
          if trim_vocab:
            arrays.append(array[:want[0]])
            continue
          hint = checkpoint.vocab_hint(config, got[0])
        mis_shaped.append((f'{name} (-> {rule.target})', got, want))
        continue
      arrays.append(array)
    if len(arrays) == len(rule.sources):
      params[rule.target] = np.asarray(
          rule.convert(*(np.asarray(a) for a in arrays)), dtype=dtype)
  unexpected = sorted(n for n in tensors if n not in used and not _hf_ignored(n))
  if missing or unexpected or mis_shaped or config_fields:
    raise CheckpointMismatchError(source, missing, unexpected, mis_shaped,
                                  config_fields, hint)
  return checkpoint.unflatten(params)


def read_config(hf_dir: str) -> dict[str, Any]:
  """The parsed `config.json` of a Hugging Face checkpoint directory."""
  if not os.path.isdir(hf_dir):
    raise HFCheckpointError(f'{hf_dir}: no such directory (a Hugging Face checkpoint '
                            'directory holds config.json and model*.safetensors)')
  path = os.path.join(hf_dir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise HFCheckpointError(f'{hf_dir} has no {CONFIG_FILE}: not a Hugging Face checkpoint '
                            'directory (it holds config.json and model*.safetensors)')
  try:
    with open(path, encoding='utf-8') as f:
      hf = json.load(f)
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    where = f', line {e.lineno}' if isinstance(e, json.JSONDecodeError) else ''
    raise HFCheckpointError(f'{path}{where}: not valid JSON ({e}); download the '
                            'checkpoint again') from None
  if not isinstance(hf, dict):
    raise HFCheckpointError(f'{path}: expected a JSON object, got {type(hf).__name__}')
  return hf


def config_from_dir(hf_dir: str, **kwargs: Any) -> tuple[str, TransformerConfig]:
  """(family, TransformerConfig) of a checkpoint directory's config.json
  (`hf_config.config_from_hf(hf, **kwargs)`); errors name the file."""
  path = os.path.join(hf_dir, CONFIG_FILE)
  hf = read_config(hf_dir)
  try:
    family, _ = hf_config.hf_text_config(hf)
    return family, hf_config.config_from_hf(hf, **kwargs)
  except HFCheckpointError as e:
    raise HFCheckpointError(f'{path}: {e}') from None
  except (KeyError, TypeError, ValueError) as e:  # a value of the wrong type or form
    raise HFCheckpointError(f'{path}: not a Gemma config this converter reads '
                            f'({type(e).__name__}: {e})') from None


def load_hf_checkpoint(hf_dir: str, config: TransformerConfig | None = None, *,
                       trim_vocab: bool = False):
  """(config, params) from a Hugging Face checkpoint directory.

  Without `config` it is derived from `config.json`. With one (e.g. a preset),
  the checkpoint must match it: the config.json's architecture and every
  tensor name and shape, or one CheckpointMismatchError lists all differences.
  The params are numpy arrays in config.param_dtype.
  """
  if config is None:
    family, config = config_from_dir(hf_dir)
    differences = []
  else:
    family, found = config_from_dir(
        hf_dir, transpose_gating_einsum=config.transpose_gating_einsum,
        param_dtype=config.param_dtype, dtype=config.dtype)
    differences = architecture_differences(found, config, trim_vocab=trim_vocab)
  with _open_safetensors(hf_dir) as tensors:
    try:
      params = convert_hf_tensors(tensors, config, family, trim_vocab=trim_vocab,
                                  source=hf_dir, config_fields=differences)
    except CheckpointMismatchError as e:
      if not differences:
        raise
      raise CheckpointMismatchError(
          hf_dir, e.missing, e.unexpected, e.mis_shaped, e.config_fields,
          f'{e.hint} The config given (e.g. a preset) is not the architecture of this '
          f'checkpoint\'s {CONFIG_FILE}: give the matching one, or none to take it from '
          f'{CONFIG_FILE}.'.strip()) from None
  return config, params


class _LazyTensors(Mapping[str, np.ndarray]):
  """Tensor name -> numpy array of open safetensors files, read on lookup."""

  def __init__(self, files: Mapping[str, Any]):
    self._files = files  # name -> the safe_open handle of its file

  def __getitem__(self, name: str) -> np.ndarray:
    return self._files[name].get_tensor(name)

  def __contains__(self, name) -> bool:  # Mapping's default would read it.
    return name in self._files

  def __iter__(self):
    return iter(self._files)

  def __len__(self) -> int:
    return len(self._files)


@contextlib.contextmanager
def _open_safetensors(directory: str) -> Iterator[Mapping[str, np.ndarray]]:
  """The tensors of `model.safetensors`, or of the shards named by
  `model.safetensors.index.json`; each is read when looked up, while open."""
  index_path = os.path.join(directory, INDEX_FILE)
  weight_map = None
  if os.path.exists(index_path):
    try:
      with open(index_path, encoding='utf-8') as f:
        index = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      raise HFCheckpointError(f'{index_path}: not valid JSON ({e}); download the '
                              'checkpoint again') from None
    weight_map = index.get('weight_map') if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
      raise HFCheckpointError(f'{index_path}: no "weight_map" object')
    paths = [os.path.join(directory, name)
             for name in sorted(set(weight_map.values()))]
    absent = [os.path.basename(p) for p in paths if not os.path.isfile(p)]
    if absent:
      raise HFCheckpointError(f'{index_path} names shards that are not in {directory}: '
                              f'{absent}; download them too')
  elif os.path.exists(os.path.join(directory, SINGLE_FILE)):
    paths = [os.path.join(directory, SINGLE_FILE)]
  else:
    raise HFCheckpointError(f'{directory}: neither {SINGLE_FILE} nor {INDEX_FILE} '
                            '(the weights of a Hugging Face checkpoint)')
  with contextlib.ExitStack() as stack:
    files = {}
    for path in paths:
      try:
        file = stack.enter_context(safetensors.safe_open(path, 'numpy'))
      except safetensors.SafetensorError as e:
        raise HFCheckpointError(f'{path}: not a valid safetensors file: {e}; download it '
                                'again') from None
      for name in file.keys():
        # The header alone: checked before any tensor is read.
        dtype = file.get_slice(name).get_dtype()
        if dtype not in _DTYPES:
          raise HFCheckpointError(f'{path}: tensor {name!r} has unsupported dtype '
                                  f'{dtype!r}; supported: {sorted(_DTYPES)}')
        if name in files:
          raise HFCheckpointError(f'{directory}: tensor {name!r} is in several shards')
        files[name] = file
    if weight_map is not None:
      missing = sorted(set(weight_map) - set(files))
      if missing:
        raise HFCheckpointError(f'{index_path}: tensors listed in the index but in no '
                                f'shard: {missing}')
    yield _LazyTensors(files)
