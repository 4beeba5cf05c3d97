r"""Decode prompts with a trained model through the PASTA interpreter.

  python -m pasta_jax.decode --workdir workdir/synth_pasta \
      --prompt 'spell and reverse each word, then join them: a) owl b) crab'

Prints each answer with one colour per thread (in a terminal), the threads one
per line, and the counts (rounds, tokens, parallelism). `--trace out.json` writes
everything (annotated document, per-thread tokens, the round-by-round timeline)
as JSON. A run trained in sequential mode decodes sequentially.

A prompt longer than the model takes (its largest prompt bucket, at most
--cache_size) is not decoded: it is reported with `status prompt_too_long` and
what would fit, the other prompts decode as they would without it, and a
warning on stderr counts them (exit status 0; 3 when no prompt fits). Bad flags
and unreadable prompt files end with one `error: ...` line (docs/training.md,
"Bad input").
"""

from __future__ import annotations

import json
import os
import sys
from typing import Sequence

from absl import app
from absl import flags

from pasta_jax import cli
from pasta_jax import errors
from pasta_jax import thread_colors
from pasta_jax import thread_view

_WORKDIR = cli.define(flags.DEFINE_string, 'workdir', None, 'Training run directory.')
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')
_PROMPTS = flags.DEFINE_multi_string('prompt', [], 'A prompt (repeatable).')
_PROMPTS_FILE = flags.DEFINE_string('prompts_file', None, 'A file with one prompt per line.')
_TEMPERATURE = flags.DEFINE_float('temperature', 0.0, '0 = greedy.')
_TOP_P = flags.DEFINE_float('top_p', 1.0, 'Nucleus sampling threshold in (0, 1] '
                            '(with --temperature > 0).')
_SEED = flags.DEFINE_integer('seed', 0, 'Request i samples with seed + i.')
_DECODER = cli.InterpreterFlags()
_TRACE = flags.DEFINE_string('trace', None, 'Write a JSON trace here.')
_COLOR = flags.DEFINE_enum('color', 'auto', ['auto', 'always', 'never'], 'Thread colours.')


def coloured_answer(result, color: bool) -> str:
  """The final answer with each part in the colour of the thread that wrote it."""
  return ''.join(thread_colors.paint(text, k, color)
                 for k, text in thread_view.answer_segments(result))


def report(result, tokenizer, color: bool) -> str:
  """What the CLI prints for one result."""
  if result.detail:  # not decoded
    return f'prompt: {result.prompt}\nstatus {result.status}: {result.detail}'
  lines = [f'prompt: {result.prompt}', 'answer:', coloured_answer(result, color), '']
  for span in result.threads:
    name = thread_view.thread_name(span.thread)
    text = thread_view.thread_text(span.tokens, tokenizer)
    lines.append(f'  {thread_colors.paint(f"{name:>9}", span.thread, color)} rounds '
                 f'{span.first_round:>3}-{span.last_round:<3} {len(span.tokens):>4} tokens '
                 f'| {text!r}')
  lines.append(thread_view.summary_line(result))
  return '\n'.join(lines)


def trace(result) -> dict:
  return {
      'prompt': result.prompt, 'status': result.status, 'detail': result.detail,
      'prompt_tokens': result.prompt_tokens, 'text': result.text,
      'annotated': result.annotated, 'ids': list(result.ids), 'steps': result.steps,
      'total_tokens': result.total_tokens, 'parallelism': result.parallelism,
      'threads': [{'thread': s.thread, 'tokens': list(s.tokens), 'first_round': s.first_round,
                   'last_round': s.last_round} for s in result.threads],
      'timeline': [{'round': r, 'thread': t, 'token': k} for r, t, k in result.timeline],
  }


def read_prompts(path: str) -> list[str]:
  """The non-blank lines of a prompts file (DataError naming the file, and the
  line for text that is not UTF-8)."""
  try:
    with open(path, 'rb') as f:
      raw = f.read()
  except OSError as e:
    raise errors.DataError(f'--prompts_file {path}: cannot read it ({e.strerror or e}); '
                           'give a text file with one prompt per line') from None
  prompts = []
  for number, line in enumerate(raw.split(b'\n'), 1):
    try:
      text = line.decode('utf-8')
    except UnicodeDecodeError as e:
      raise errors.DataError(f'--prompts_file {path}, line {number}: not UTF-8 text (byte '
                             f'{line[e.start]:#04x} at column {e.start + 1}); save the file '
                             'as UTF-8') from None
    if text.strip():
      prompts.append(text.rstrip('\r'))
  return prompts


def check_flags(num_prompts: int) -> None:
  """UsageError for a sampling or decoding flag out of range (before any loading)."""
  from pasta_jax.interpreter import sampling  # pylint: disable=g-import-not-at-top
  try:
    sampling.check_settings(_TEMPERATURE.value, _TOP_P.value)
  except ValueError as e:
    raise errors.UsageError(f'--{e}') from None
  _DECODER.check()
  if _TRACE.value:
    folder = os.path.dirname(os.path.abspath(_TRACE.value))
    cli.check_flag(_TRACE, os.path.isdir(folder) and not os.path.isdir(_TRACE.value),
                   f'a file path in an existing directory ({folder})')
  cli.check_flag(_SEED, 0 <= _SEED.value <= 2**32 - num_prompts,
                 f'an int in [0, {2**32 - num_prompts}] (request i uses seed + i)')


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not _WORKDIR.value:
    raise app.UsageError('--workdir is required')
  prompts = list(_PROMPTS.value)
  if _PROMPTS_FILE.value:
    prompts += read_prompts(_PROMPTS_FILE.value)
  if not prompts:
    raise app.UsageError('give at least one --prompt or a --prompts_file')
  check_flags(len(prompts))
  from pasta_jax.interpreter import Interpreter  # pylint: disable=g-import-not-at-top
  from pasta_jax.runs import load_run  # pylint: disable=g-import-not-at-top
  run = load_run(_WORKDIR.value, _STEP.value)
  overrides = _DECODER.overrides()
  if overrides.get('slots') == 1:
    overrides['mode'] = 'sequential'
  if _TOP_P.value < 1:
    overrides['use_top_p'] = True  # the nucleus cut is compiled in only when asked for
  try:
    interp = Interpreter.from_run(run, **overrides)
  except errors.UserError:
    raise
  except ValueError as e:  # e.g. --slots or --cache_size that the run's settings reject
    raise errors.UsageError(str(e)) from None
  results = interp.generate(prompts, temperature=_TEMPERATURE.value, top_p=_TOP_P.value,
                            seed=_SEED.value)
  skipped = [r for r in results if r.detail]
  if len(skipped) == len(results):
    raise errors.DataError(f'no prompt was decoded: {skipped[0].detail}')
  color = {'always': True, 'never': False}.get(_COLOR.value, sys.stdout.isatty())
  for result in results:
    print(report(result, run.tokenizer, color))
    print()
  if _TRACE.value:
    with open(_TRACE.value, 'w', encoding='utf-8') as f:
      json.dump({'workdir': _WORKDIR.value, 'step': run.step,
                 'results': [trace(r) for r in results]}, f, indent=1)
    print(f'trace written to {_TRACE.value}')
  if skipped:
    print(f'warning: {len(skipped)} of {len(results)} prompts were too long and not decoded '
          '(status prompt_too_long above)', file=sys.stderr)


if __name__ == '__main__':
  cli.run(main)
