r"""Prepares the synthetic PASTA benchmark: data, tokenizer, token layouts.

  python -m pasta_jax.prepare --config configs/synth.py --workdir /tmp/pasta_synth

Generates the benchmark splits, trains the tokenizer (PASTA control tokens as
single ids), encodes every example, lays out each one for PASTA and for the
sequential baseline, checks that every document survives encode -> decode and
that every layout is well formed, writes the splits as JSONL beside the tokenizer
and prints what it made.
"""

from __future__ import annotations

import collections
import json
import math
import os
import sys
import time
from typing import Sequence

from absl import app
from absl import flags
from ml_collections import config_flags
import numpy as np

from pasta_jax import lang
from pasta_jax import layout
from pasta_jax import tokenizer as tokenizer_lib
from pasta_jax.data import encoding
from pasta_jax.data import synthetic

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (path[:preset]).')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Output directory.')


def _geomean(values: Sequence[float]) -> float:
  return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float('nan')


def _splits(config) -> dict[str, list[synthetic.Example]]:
  sizes = {'train': config.data.num_train, 'validation': config.data.num_validation,
           'test': config.data.num_test}
  return {split: list(synthetic.generate(split, n, seed=config.seed,
                                         families=tuple(config.data.families),
                                         quantum=config.data.quantum))
          for split, n in sizes.items()}


def _tokenizer_texts(examples: Sequence[synthetic.Example], limit: int):
  for example in examples[:limit]:
    yield example.prompt
    yield example.plain
    for promise in example.document().promises:
      yield promise.topic


def thread_view(doc: lang.Document, color: bool) -> str:
  """The main thread and each async thread on their own lines (one colour each)."""
  palette = ['\033[1m', '\033[36m', '\033[33m', '\033[35m', '\033[32m', '\033[34m']
  reset = '\033[0m' if color else ''
  main, threads = [], []
  for node in doc.nodes:
    if isinstance(node, lang.Promise):
      threads.append(node.body or '')
      main.append(f'<promise topic="{node.topic}" tokens="{node.tokens}"/>')
    else:
      main.append(lang.serialize(lang.Document((node,))))
  rows = [('main', ''.join(main))] + [(f'thread {k}', body)
                                       for k, body in enumerate(threads, 1)]
  lines = []
  for k, (name, text) in enumerate(rows):
    paint = palette[k % len(palette)] if color else ''
    lines.append(f'  {paint}{name:>9}{reset} | {paint}{text!r}{reset}')
  return '\n'.join(lines)


def prepare(config, workdir: str, out=sys.stdout) -> dict:
  """Runs the pipeline; returns the per-family summary (also printed)."""
  start = time.time()
  os.makedirs(os.path.join(workdir, 'data'), exist_ok=True)
  examples = _splits(config)
  tok = tokenizer_lib.train_tokenizer(
      _tokenizer_texts(examples['train'], config.tokenizer.num_texts),
      os.path.join(workdir, 'tokenizer.model'), vocab_size=config.tokenizer.vocab_size,
      max_promise_tokens=config.data.max_promise_tokens, quantum=config.data.quantum,
      seed=config.seed)
  stats = collections.defaultdict(lambda: collections.defaultdict(list))
  sample = None
  for split, split_examples in examples.items():
    with open(os.path.join(workdir, 'data', f'{split}.jsonl'), 'w') as f:
      for example in split_examples:
        enc = encoding.encode_example(example.prompt, example.annotated, tok,
                                      template=config.data.prompt_template,
                                      promise_lengths=config.data.promise_lengths)
        if tok.decode(enc.response) != enc.document:
          raise AssertionError(f'encode -> decode changed a {split} document: '
                               f'{example.prompt!r}')
        pasta = layout.pasta_layout(enc.prompt, enc.response, tok.control,
                                    strategy=config.data.position_strategy,
                                    fixed_reserve=config.data.fixed_reserve)
        sequential = layout.sequential_layout(enc.prompt, enc.plain)
        steps = layout.decode_steps(enc.response, tok.control,
                                    slots=config.interpreter.slots)
        row = stats[(split, example.family)]
        row['response'].append(len(enc.response))
        row['plain'].append(len(enc.plain))
        row['promises'].append(len(enc.document.promises))
        row['speedup'].append(len(enc.plain) / steps)
        row['targets'].append(float(pasta.loss_weights.sum()))
        row['seq_targets'].append(float(sequential.loss_weights.sum()))
        if sample is None and len(enc.document.promises) >= 2:
          sample = (example, enc, pasta)
        f.write(json.dumps({
            'prompt': example.prompt,
            'annotated_response': lang.serialize(enc.document),
            'plain_response': example.plain, 'family': example.family,
            'facts': example.facts}) + '\n')
  summary = _report(tok, stats, sample, workdir, time.time() - start, out)
  with open(os.path.join(workdir, 'summary.json'), 'w') as f:
    json.dump(summary, f, indent=2)
  return summary


def _report(tok, stats, sample, workdir, seconds, out) -> dict:
  color = hasattr(out, 'isatty') and out.isatty()
  print(f'Tokenizer: {tok.vocab_size} ids, {len(tok.control.tag_ids)} PASTA control ids '
        f'(lengths 0..{tok.max_promise_tokens} by {tok.quantum}) -> '
        f'{os.path.join(workdir, "tokenizer.model")}', file=out)
  if sample is not None:
    example, enc, pasta = sample
    print(f'\nSample ({example.family}): {example.prompt!r}', file=out)
    print(thread_view(enc.document, color), file=out)
    n, shown = len(enc.prompt), slice(len(enc.prompt), len(enc.prompt) + 40)
    more = ' ...' if len(enc.response) > 40 else ''
    print(f'  first response tokens (of {len(enc.response)}): '
          f'{[tok.id_to_piece(int(i)) for i in enc.response[:40]]}{more}', file=out)
    print(f'  thread ids: {pasta.thread[shown].tolist()}{more}', file=out)
    print(f'  positions:  {pasta.positions[shown].tolist()}{more}', file=out)
  header = ('| split | family | examples | PASTA tokens | plain tokens | promises '
            '| theoretical speedup (geomean, min-max) |')
  print('\n' + header + '\n|' + '---|' * 7, file=out)
  summary = {}
  for (split, family), row in sorted(stats.items()):
    speedup = row['speedup']
    summary[f'{split}/{family}'] = {
        'examples': len(speedup), 'response_tokens': float(np.mean(row['response'])),
        'plain_tokens': float(np.mean(row['plain'])),
        'promises': float(np.mean(row['promises'])),
        'speedup_geomean': _geomean(speedup), 'speedup_min': min(speedup),
        'speedup_max': max(speedup)}
    s = summary[f'{split}/{family}']
    print(f'| {split} | {family} | {s["examples"]} | {s["response_tokens"]:.1f} | '
          f'{s["plain_tokens"]:.1f} | {s["promises"]:.2f} | {s["speedup_geomean"]:.2f} '
          f'({s["speedup_min"]:.2f}-{s["speedup_max"]:.2f}) |', file=out)
  print(f'\nEvery document survived encode -> decode; layouts built for PASTA and '
        f'sequential training. Data: {os.path.join(workdir, "data")}/*.jsonl '
        f'({seconds:.1f} s)', file=out)
  return summary


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if _CONFIG.value is None or _WORKDIR.value is None:
    raise app.UsageError('--config and --workdir are required')
  prepare(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  app.run(main)
