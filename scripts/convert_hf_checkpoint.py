"""Converts a Hugging Face Gemma / Gemma 2 / Gemma 3 (text) checkpoint to this project's layout.

    python scripts/convert_hf_checkpoint.py --hf_dir ~/hf/gemma-2-2b \
        --out_dir ~/ckpt/gemma2_2b --preset gemma2_2b

Reads config.json and the safetensors files (single or sharded) of HF_DIR and
writes OUT_DIR/params (an orbax checkpoint of the nested param tree, the official
Gemma Flax names) and OUT_DIR/config.json (the TransformerConfig). Load it with
`pasta_jax.models.checkpoint.load_converted(OUT_DIR)`.

With --preset the checkpoint must match that preset (architecture fields of
config.json, every tensor name and shape), or the script stops with one error
listing every difference; without it the config comes from config.json.
--trim_vocab keeps the first vocab_size embedding rows of a larger table (e.g. a
multimodal Gemma 3 checkpoint's image tokens).

Mistakes end with `error: ...` and an exit status (docs/models.md): 2 for a flag
(a non-empty --out_dir, an unknown --param_dtype), 4 for the checkpoint (no such
directory, no or malformed config.json, an unsupported architecture, missing or
damaged safetensors files, tensors that do not match). --verbose adds the
traceback.
"""

from __future__ import annotations

import os
from typing import Sequence

from absl import app
from absl import flags
import jax.numpy as jnp

from pasta_jax import cli
from pasta_jax.models import checkpoint
from pasta_jax.models import config as config_lib
from pasta_jax.models import hf

_HF_DIR = flags.DEFINE_string('hf_dir', None, 'Hugging Face checkpoint directory.')
_OUT_DIR = flags.DEFINE_string('out_dir', None,
                               'Output directory (params/ and config.json).')
_PRESET = flags.DEFINE_enum('preset', None, sorted(config_lib.PRESETS),
                            'Preset the checkpoint must match.')
_PARAM_DTYPE = flags.DEFINE_string(
    'param_dtype', None, 'Stored parameter dtype (default: the preset\'s, or '
    'the checkpoint\'s torch_dtype).')
_TRIM_VOCAB = flags.DEFINE_bool(
    'trim_vocab', False, 'Keep the first vocab_size rows of a larger embedding '
    'table.')


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not (_HF_DIR.value and _OUT_DIR.value):
    raise app.UsageError('--hf_dir and --out_dir are required')
  hf_dir, out_dir = _HF_DIR.value, _OUT_DIR.value
  fresh = not os.path.exists(out_dir) or (os.path.isdir(out_dir) and not os.listdir(out_dir))
  cli.check_flag(_OUT_DIR, fresh, 'a new or empty directory (this one is not empty: remove '
                 'it or choose another)')
  overrides = {}
  if _PARAM_DTYPE.value:
    try:
      floating = jnp.issubdtype(jnp.dtype(_PARAM_DTYPE.value), jnp.floating)
    except TypeError:
      floating = False
    cli.check_flag(_PARAM_DTYPE, floating, 'a float dtype: float32, bfloat16 or float16')
    overrides['param_dtype'] = _PARAM_DTYPE.value
  if _PRESET.value:
    config = config_lib.get_config(_PRESET.value, **overrides)
  else:
    _, config = hf.config_from_dir(hf_dir, **overrides)
  config, params = hf.load_hf_checkpoint(hf_dir, config,
                                         trim_vocab=_TRIM_VOCAB.value)
  checkpoint.save_converted(out_dir, params, config)
  print(f'Wrote {out_dir}: {config.num_layers} layers, vocab '
        f'{config.vocab_size}, params {config.param_dtype}.')


if __name__ == '__main__':
  cli.run(main)
