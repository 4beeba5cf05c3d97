r"""Prepares the synthetic PASTA benchmark: dataset, tokenizer, layouts, batches.

  python -m pasta_jax.prepare --config configs/synth.py --workdir /tmp/pasta_synth

Builds the `pasta_synth` TFDS dataset (offline, ArrayRecord; reused when already
built), trains the tokenizer on its training split (PASTA control tokens as single
ids), encodes every example, lays out each one for PASTA and for the sequential
baseline, checks that every document survives encode -> decode, packs a batch with
the training input pipeline, and prints what it made.
"""

from __future__ import annotations

import collections
import json
import os
import statistics
import sys
import time
from typing import Sequence

from absl import app
from absl import flags
from ml_collections import config_flags
import numpy as np
from tqdm import auto as tqdm_auto

from pasta_jax import cli
from pasta_jax import config as config_lib
from pasta_jax import errors
from pasta_jax import lang
from pasta_jax import layout
from pasta_jax import thread_colors
from pasta_jax import tokenizer as tokenizer_lib
from pasta_jax.data import build
from pasta_jax.data import encoding
from pasta_jax.data import pipeline
from pasta_jax.data import sources as sources_lib
from pasta_jax.data import records
from pasta_jax.settings import Mode
from pasta_jax.training import inputs

_CONFIG = cli.define(config_flags.DEFINE_config_file, 'config', None,
                     'Config file (path[:preset]).')
_WORKDIR = cli.define(flags.DEFINE_string, 'workdir', None, 'Output directory.')


SPLITS = ('train', 'validation', 'test')


def thread_view(doc: lang.Document, color: bool) -> str:
  """The main thread and each async thread on their own lines (one colour each)."""
  main, threads = [], []
  for node in doc.nodes:
    if isinstance(node, lang.Promise):
      threads.append(node.body or '')
      main.append(f'<promise topic="{node.topic}" tokens="{node.tokens}"/>')
    else:
      main.append(lang.serialize(lang.Document((node,))))
  rows = [('main', ''.join(main))] + [(f'thread {k}', body)
                                       for k, body in enumerate(threads, 1)]
  return '\n'.join(f'  {thread_colors.paint(f"{name:>9}", k, color)} | '
                   f'{thread_colors.paint(repr(text), k, color)}'
                   for k, (name, text) in enumerate(rows))


def prepare(config, workdir: str, out=sys.stdout) -> dict:
  """Runs the pipeline; returns the per-family summary (also printed)."""
  config = config_lib.resolve(config)
  start = time.time()
  os.makedirs(workdir, exist_ok=True)
  builder = build.builder(config.data)
  sources = {split: builder.as_data_source(split=split) for split in SPLITS}
  tok = tokenizer_lib.train_tokenizer(
      sources_lib.tokenizer_texts(sources['train'], config.tokenizer.num_texts),
      os.path.join(workdir, 'tokenizer.model'), vocab_size=config.tokenizer.vocab_size,
      max_promise_tokens=config.data.max_promise_tokens, quantum=config.data.quantum,
      seed=config.seed)
  stats = collections.defaultdict(lambda: collections.defaultdict(list))
  sample = None
  # The rounds of the interpreter decoding each reference annotation (in PASTA
  # mode whatever the config's mode, so a sequential config measures the same).
  slots = config_lib.interpreter_config(config, mode=Mode.PASTA).slots
  for split, source in sources.items():
    for i in tqdm_auto.trange(len(source), desc=f'checking {split}', unit='example'):
      record = source[i]
      prompt = records.decode_text(record['prompt'])
      family = records.decode_text(record['family'])
      enc = encoding.encode_example(prompt,
                                    records.decode_text(record['annotated_response']),
                                    tok, template=config.data.prompt_template,
                                    promise_lengths=config.data.promise_lengths)
      if tok.decode(enc.response) != enc.document:
        raise errors.DataError(
            f'{split} example {i} does not survive encode -> decode (the tokenizer '
            f'normalises or cannot spell some of its text): prompt {prompt[:80]!r}')
      pasta = layout.pasta_layout(enc.prompt, enc.response, tok.control,
                                  position_strategy=config_lib.position_strategy(config))
      layout.sequential_layout(enc.prompt, enc.plain)
      steps = layout.decode_steps(enc.response, tok.control, slots=slots)
      row = stats[(split, family)]
      row['response'].append(len(enc.response))
      row['plain'].append(len(enc.plain))
      row['promises'].append(len(enc.document.promises))
      row['speedup'].append(len(enc.plain) / steps)
      if sample is None and len(enc.document.promises) >= 2:
        sample = (prompt, family, enc, pasta)
  batches = inputs.batches(config, sources['train'], tok, rows=config.data.batch_size,
                           train=True, process_index=0, process_count=1)
  batch_info = pipeline.describe(next(batches))
  summary = _report(tok, stats, sample, batch_info, builder, time.time() - start, out)
  summary['_tokenizer'] = os.path.join(workdir, 'tokenizer.model')
  with open(os.path.join(workdir, 'summary.json'), 'w') as f:
    json.dump(summary, f, indent=2)
  return summary


def _report(tok, stats, sample, batch_info, builder, seconds, out) -> dict:
  color = hasattr(out, 'isatty') and out.isatty()
  splits = ', '.join(f'{s} {i.num_examples}' for s, i in builder.info.splits.items())
  print(f'Dataset: {builder.info.full_name} ({splits}) in {builder.data_dir}', file=out)
  print(f'Tokenizer: {tok.vocab_size} ids, {len(tok.control.tag_ids)} PASTA control ids '
        f'(lengths 0..{tok.max_promise_tokens} by {tok.quantum})', file=out)
  if sample is not None:
    prompt, family, enc, pasta = sample
    print(f'\nSample ({family}): {prompt!r}', file=out)
    print(thread_view(enc.document, color), file=out)
    shown = slice(len(enc.prompt), len(enc.prompt) + 40)
    more = ' ...' if len(enc.response) > 40 else ''
    print(f'  first response tokens (of {len(enc.response)}): '
          f'{[tok.id_to_piece(int(i)) for i in enc.response[:40]]}{more}', file=out)
    print(f'  thread ids: {pasta.thread[shown].tolist()}{more}', file=out)
    print(f'  positions:  {pasta.positions[shown].tolist()}{more}', file=out)
  header = ('| split | family | examples | PASTA tokens | plain tokens | promises '
            '| theoretical speedup: geomean | p10 / p50 / p90 | min-max |')
  print('\n' + header + '\n|' + '---|' * 9, file=out)
  summary = {}
  for (split, family), row in sorted(stats.items()):
    speedup = row['speedup']
    summary[f'{split}/{family}'] = {
        'examples': len(speedup), 'response_tokens': float(np.mean(row['response'])),
        'plain_tokens': float(np.mean(row['plain'])),
        'promises': float(np.mean(row['promises'])),
        'speedup_geomean': statistics.geometric_mean(speedup), 'speedup_min': min(speedup),
        'speedup_max': max(speedup),
        'speedup_p10_p50_p90': [float(v) for v in np.percentile(speedup, [10, 50, 90])]}
    s = summary[f'{split}/{family}']
    p10, p50, p90 = s['speedup_p10_p50_p90']
    print(f'| {split} | {family} | {s["examples"]} | {s["response_tokens"]:.1f} | '
          f'{s["plain_tokens"]:.1f} | {s["promises"]:.2f} | {s["speedup_geomean"]:.2f} | '
          f'{p10:.2f} / {p50:.2f} / {p90:.2f} | {s["speedup_min"]:.2f}-'
          f'{s["speedup_max"]:.2f} |', file=out)
  print(f'\nA packed training batch: {batch_info["examples"]:.0f} examples, '
        f'{100 * batch_info["fill"]:.0f}% of its tokens used, '
        f'{batch_info["main_targets"]:.0f} main-thread and {batch_info["async_targets"]:.0f} '
        f'async-thread targets.', file=out)
  print(f'Every document survived encode -> decode; layouts built for PASTA and '
        f'sequential training ({seconds:.1f} s).', file=out)
  return summary


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if _CONFIG.value is None or _WORKDIR.value is None:
    raise app.UsageError('--config and --workdir are required')
  try:
    os.makedirs(_WORKDIR.value, exist_ok=True)
  except (FileExistsError, NotADirectoryError, PermissionError) as e:
    raise errors.UsageError(f'--workdir {_WORKDIR.value}: cannot make it a directory '
                            f'({e.strerror}); choose another') from None
  prepare(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  cli.run(main)
