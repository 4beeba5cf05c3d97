r"""Builds the project's TFDS datasets offline (ArrayRecord, no TensorFlow).

The synthetic benchmark (sizes from the builder config: `default` or `tiny`):

  python -m pasta_jax.data.build --dataset=pasta_synth --config=default --data_dir=~/tensorflow_datasets

A dataset of your own annotated responses from JSONL files (`prompt`,
`annotated_response`, optional `family`, `facts` and any extras), skipping and
counting bad lines instead of stopping at the first:

  python -m pasta_jax.data.build --dataset=pasta_jsonl --name=slimorca_pasta \
      --train=train.jsonl --validation=val.jsonl --on_error=skip --data_dir=DIR

Building is idempotent: an existing build is reused.
"""

from __future__ import annotations

import os
from typing import Sequence

from absl import app
from absl import flags

def default_data_dir() -> str:
  return os.path.expanduser(os.environ.get('TFDS_DATA_DIR', '~/tensorflow_datasets'))


def builder(data_config, data_dir: str | None = None, *, prepare: bool = True):
  """The TFDS builder that `data_config` (a config's `data` field) names, built.

  `data_config.name` is 'pasta_synth' (with `tfds_config`, e.g. 'default' or
  'tiny') or 'pasta_jsonl' (with `jsonl_name`, `jsonl_paths` {split: path},
  `on_error`, `quantum`).
  """
  from pasta_jax.data import tfds_builders  # pylint: disable=g-import-not-at-top
  data_dir = data_dir or data_config.get('data_dir') or default_data_dir()
  name = data_config.name
  if name == 'pasta_synth':
    result = tfds_builders.PastaSynth(config=data_config.get('tfds_config', 'default'),
                                      data_dir=data_dir,
                                      file_format=tfds_builders.FILE_FORMAT)
  elif name == 'pasta_jsonl':
    config = tfds_builders.PastaJsonlConfig(
        name=data_config.jsonl_name, paths=dict(data_config.jsonl_paths),
        on_error=data_config.get('on_error', 'fail'),
        quantum=data_config.get('quantum', 10))
    result = tfds_builders.PastaJsonl(config=config, data_dir=data_dir,
                                      file_format=tfds_builders.FILE_FORMAT)
  else:
    raise ValueError(f"unknown dataset {name!r}; expected 'pasta_synth' or 'pasta_jsonl'")
  if prepare:
    result.download_and_prepare()
  return result


def main(argv: Sequence[str]) -> None:
  """The command line (flags are defined only when this module is run)."""
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  import ml_collections  # pylint: disable=g-import-not-at-top
  data = ml_collections.ConfigDict({'name': _DATASET.value, 'tfds_config': _CONFIG.value,
                                    'on_error': _ON_ERROR.value})
  if _DATASET.value == 'pasta_jsonl':
    paths = {split: tuple(flag.value) for split, flag in _SPLITS.items() if flag.value}
    if not _NAME.value or not paths:
      raise app.UsageError('pasta_jsonl needs --name and at least one of --train, '
                           '--validation, --test')
    data.jsonl_name, data.jsonl_paths = _NAME.value, paths
  built = builder(data, _DATA_DIR.value)
  print(f'{built.info.full_name} in {built.data_dir}')
  for split, info in built.info.splits.items():
    print(f'  {split}: {info.num_examples} examples')
  skipped = dict(built.info.metadata or {}).get('skipped') if _DATASET.value == 'pasta_jsonl' else None
  if skipped:
    for split, counts in skipped.items():
      print(f'  {split}: skipped {sum(counts.values())} bad lines: {counts}')


def _define_flags() -> None:
  global _DATASET, _CONFIG, _NAME, _DATA_DIR, _ON_ERROR, _SPLITS
  _DATASET = flags.DEFINE_enum('dataset', 'pasta_synth', ['pasta_synth', 'pasta_jsonl'],
                               'Which dataset to build.')
  _CONFIG = flags.DEFINE_string('config', 'default', 'pasta_synth builder config.')
  _NAME = flags.DEFINE_string('name', None, 'pasta_jsonl: the dataset config name.')
  _DATA_DIR = flags.DEFINE_string('data_dir', None, 'TFDS data directory.')
  _ON_ERROR = flags.DEFINE_enum('on_error', 'fail', ['fail', 'skip'],
                                'pasta_jsonl: what to do with a bad line.')
  _SPLITS = {split: flags.DEFINE_multi_string(split, [], f'pasta_jsonl: {split} JSONL file(s).')
             for split in ('train', 'validation', 'test')}


if __name__ == '__main__':
  _define_flags()
  app.run(main)
