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

import argparse
import json
import os
import sys

from pasta_jax.models import checkpoint
from pasta_jax.models import config as config_lib


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--hf_dir', required=True,
                      help='Hugging Face checkpoint directory.')
  parser.add_argument('--out_dir', required=True,
                      help='Output directory (params/ and config.json).')
  parser.add_argument('--preset', choices=sorted(config_lib.PRESETS),
                      help='Preset the checkpoint must match.')
  parser.add_argument('--param_dtype', default=None,
                      help='Stored parameter dtype (default: the preset\'s, or '
                      'the checkpoint\'s torch_dtype).')
  parser.add_argument('--trim_vocab', action='store_true',
                      help='Keep the first vocab_size rows of a larger '
                      'embedding table.')
  args = parser.parse_args(argv)

  overrides = {'param_dtype': args.param_dtype} if args.param_dtype else {}
  if args.preset:
    config = config_lib.get_config(args.preset, **overrides)
  else:
    with open(os.path.join(args.hf_dir, checkpoint.CONFIG_FILE)) as f:
      config = checkpoint.config_from_hf(json.load(f), **overrides)
  config, params = checkpoint.load_hf_checkpoint(args.hf_dir, config,
                                                 trim_vocab=args.trim_vocab)
  checkpoint.save_converted(args.out_dir, params, config)
  print(f'Wrote {args.out_dir}: {config.num_layers} layers, vocab '
        f'{config.vocab_size}, params {config.param_dtype}.')


if __name__ == '__main__':
  main(sys.argv[1:])
