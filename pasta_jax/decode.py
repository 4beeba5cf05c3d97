r"""Decode prompts with a trained model through the PASTA interpreter.

  python -m pasta_jax.decode --workdir workdir/synth_pasta \
      --prompt 'spell and reverse each word, then join them: a) owl b) crab'

Prints each answer with one colour per thread (in a terminal), the threads one
per line, and the counts (rounds, tokens, parallelism). `--trace out.json` writes
everything (annotated document, per-thread tokens, the round-by-round timeline)
as JSON. A run trained in sequential mode decodes sequentially.
"""

from __future__ import annotations

import json
import sys
from typing import Sequence

from absl import app
from absl import flags

from pasta_jax import thread_colors

_WORKDIR = flags.DEFINE_string('workdir', None, 'Training run directory.')
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')
_PROMPTS = flags.DEFINE_multi_string('prompt', [], 'A prompt (repeatable).')
_PROMPTS_FILE = flags.DEFINE_string('prompts_file', None, 'A file with one prompt per line.')
_TEMPERATURE = flags.DEFINE_float('temperature', 0.0, '0 = greedy.')
_TOP_P = flags.DEFINE_float('top_p', 1.0, 'Nucleus sampling threshold (with --temperature).')
_SEED = flags.DEFINE_integer('seed', 0, 'Request i samples with seed + i.')
_SLOTS = flags.DEFINE_integer('slots', None, 'Thread slots (default: the run config).')
_MAX_STEPS = flags.DEFINE_integer('max_steps', None, 'Decode rounds per request.')
_TRACE = flags.DEFINE_string('trace', None, 'Write a JSON trace here.')
_COLOR = flags.DEFINE_enum('color', 'auto', ['auto', 'always', 'never'], 'Thread colours.')


def coloured_answer(result, color: bool) -> str:
  """The final answer with each part in the colour of the thread that wrote it."""
  from pasta_jax import lang  # pylint: disable=g-import-not-at-top
  if result.document is None:
    return result.text
  out, thread = [], 0
  for node in result.document.nodes:
    if isinstance(node, lang.Text):
      out.append((0, node.text))
    elif isinstance(node, lang.Promise):
      thread += 1
      out.append((thread, node.body or ''))
  return ''.join(thread_colors.paint(text, k, color) for k, text in out)


def report(result, tokenizer, color: bool) -> str:
  lines = [f'prompt: {result.prompt}', 'answer:', coloured_answer(result, color), '']
  for span in result.threads:
    name = 'main' if span.thread == 0 else f'thread {span.thread}'
    text = tokenizer.decode_text([t for t in span.tokens
                                  if t not in tokenizer.control.tag_ids
                                  and t != tokenizer.eos_id])
    lines.append(f'  {thread_colors.paint(f"{name:>9}", span.thread, color)} rounds '
                 f'{span.first_round:>3}-{span.last_round:<3} {len(span.tokens):>4} tokens '
                 f'| {text!r}')
  lines.append(f'status {result.status}: {result.steps} rounds, {result.total_tokens} '
               f'tokens, parallelism {result.parallelism:.2f}')
  return '\n'.join(lines)


def trace(result) -> dict:
  return {
      'prompt': result.prompt, 'status': result.status, 'text': result.text,
      'annotated': result.annotated, 'ids': list(result.ids), 'steps': result.steps,
      'total_tokens': result.total_tokens, 'parallelism': result.parallelism,
      'threads': [{'thread': s.thread, 'tokens': list(s.tokens), 'first_round': s.first_round,
                   'last_round': s.last_round} for s in result.threads],
      'timeline': [{'round': r, 'thread': t, 'token': k} for r, t, k in result.timeline],
  }


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not _WORKDIR.value:
    raise app.UsageError('--workdir is required')
  prompts = list(_PROMPTS.value)
  if _PROMPTS_FILE.value:
    with open(_PROMPTS_FILE.value, encoding='utf-8') as f:
      prompts += [line.rstrip('\n') for line in f if line.strip()]
  if not prompts:
    raise app.UsageError('give at least one --prompt or a --prompts_file')
  from pasta_jax.interpreter import Interpreter  # pylint: disable=g-import-not-at-top
  from pasta_jax.runs import load_run  # pylint: disable=g-import-not-at-top
  run = load_run(_WORKDIR.value, _STEP.value)
  overrides = {k: v for k, v in (('slots', _SLOTS.value), ('max_steps', _MAX_STEPS.value))
               if v is not None}
  if overrides.get('slots') == 1:
    overrides['mode'] = 'sequential'
  interp = Interpreter.from_run(run, **overrides)
  results = interp.generate(prompts, temperature=_TEMPERATURE.value, top_p=_TOP_P.value,
                            seed=_SEED.value)
  color = {'always': True, 'never': False}.get(_COLOR.value, sys.stdout.isatty())
  for result in results:
    print(report(result, run.tokenizer, color))
    print()
  if _TRACE.value:
    with open(_TRACE.value, 'w', encoding='utf-8') as f:
      json.dump({'workdir': _WORKDIR.value, 'step': run.step,
                 'results': [trace(r) for r in results]}, f, indent=1)
    print(f'trace written to {_TRACE.value}')


if __name__ == '__main__':
  app.run(main)
