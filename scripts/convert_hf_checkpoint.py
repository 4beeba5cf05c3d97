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
"""

from __future__ import annotations

import json
import os
from typing import Sequence

from absl import app
from absl import flags

from pasta_jax.models import checkpoint
from pasta_jax.models import config as config_lib
from pasta_jax.models import hf
from pasta_jax.models import hf_config

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
  overrides = {'param_dtype': _PARAM_DTYPE.value} if _PARAM_DTYPE.value else {}
  if _PRESET.value:
    config = config_lib.get_config(_PRESET.value, **overrides)
  else:
    with open(os.path.join(hf_dir, hf.CONFIG_FILE)) as f:
      config = hf_config.config_from_hf(json.load(f), **overrides)
  config, params = hf.load_hf_checkpoint(hf_dir, config,
                                         trim_vocab=_TRIM_VOCAB.value)
  checkpoint.save_converted(out_dir, params, config)
  print(f'Wrote {out_dir}: {config.num_layers} layers, vocab '
        f'{config.vocab_size}, params {config.param_dtype}.')


if __name__ == '__main__':
  app.run(main)
