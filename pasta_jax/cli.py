"""What every command line shares: `cli.run(main)` in place of `absl.app.run(main)`.

A user's mistake (a `pasta_jax.errors.UserError`, absl's `app.UsageError`, a flag
or config override that does not parse, a full disk) is printed as one or two
lines, `error: ...`, and ends the process with the status that
`pasta_jax/errors.py` lists; everything else is a bug and keeps its traceback.
`--verbose` shows the traceback of user errors too.
"""

from __future__ import annotations

import ast
import errno
import functools
import re
import sys
from typing import Any, Callable, NoReturn, Sequence

from absl import app
from absl import flags

from pasta_jax import errors

_VERBOSE = flags.DEFINE_bool('verbose', False,
                             'Show the Python traceback of user errors too (for bug reports).')


def fail(message: str, status: int) -> NoReturn:
  """Prints `error: message` on stderr and exits with `status`."""
  sys.stderr.write(f'error: {message}\n')
  sys.stderr.flush()
  sys.exit(status)


def check_flag(flag: flags.FlagHolder, ok: bool, expected: str) -> None:
  """Raises `UsageError('--NAME=VALUE: expected EXPECTED')` unless `ok`."""
  if not ok:
    raise errors.UsageError(f'--{flag.name}={flag.value}: expected {expected}')


def check_positive(*holders: flags.FlagHolder) -> None:
  """Each integer flag that is set must be >= 1 (`check_flag`)."""
  for flag in holders:
    if flag.value is not None:
      check_flag(flag, flag.value >= 1, 'an int >= 1')


class InterpreterFlags:
  """`--slots`, `--max_steps` and `--cache_size`: the decoder settings that decode and
  evaluate override (defined once per process, whichever of them is imported first)."""

  def __init__(self):
    self.slots = _integer_flag('slots', 'Thread slots (default: the run config).')
    self.max_steps = _integer_flag('max_steps', 'Decode rounds per request (default: the '
                                   'run config).')
    self.cache_size = _integer_flag('cache_size', 'KV-cache entries per request, prompt '
                                    'included (default: the run config); it bounds the '
                                    'prompt length.')

  def check(self) -> None:
    """Raises a `UsageError` for a value out of range."""
    check_positive(self.slots, self.max_steps)
    if self.cache_size.value is not None:
      check_flag(self.cache_size, self.cache_size.value >= 2, 'an int >= 2')

  def overrides(self) -> dict[str, int]:
    """The InterpreterConfig fields the flags set."""
    return {flag.name: flag.value for flag in (self.slots, self.max_steps, self.cache_size)
            if flag.value is not None}


def define(define_flag: Callable[..., flags.FlagHolder], name: str, default: Any,
           help_text: str, **kwargs: Any) -> flags.FlagHolder:
  """`define_flag(name, default, help_text, **kwargs)` (`flags.DEFINE_string`, ...), or
  the flag another command line already defined under that name: a notebook or a test
  may import several of them into one process."""
  if name in flags.FLAGS:
    return flags.FlagHolder(flags.FLAGS, flags.FLAGS[name])
  return define_flag(name, default, help_text, **kwargs)


def _integer_flag(name: str, help_text: str) -> flags.FlagHolder:
  return define(flags.DEFINE_integer, name, None, help_text)


def run(main: Callable[[Sequence[str]], None]) -> None:
  """`absl.app.run(main)` with the user-error handling described above."""
  app.run(functools.partial(_guarded, main), flags_parser=_parse_flags)


def _guarded(main: Callable[[Sequence[str]], None], argv: Sequence[str]) -> None:
  try:
    main(argv)
  except app.UsageError as e:
    if _VERBOSE.value:
      raise
    fail(f'{e} (see --helpshort)', errors.UsageError.exit_status)
  except errors.UserError as e:
    if _VERBOSE.value:
      raise
    fail(str(e), e.exit_status)
  except OSError as e:
    if e.errno != errno.ENOSPC or _VERBOSE.value:
      raise
    where = f' writing {e.filename}' if e.filename else ''
    fail(f'no space left on device{where}; free some space and run the same command again '
         '(a training run resumes from its last checkpoint)', errors.ResourceError.exit_status)


def _parse_flags(argv: Sequence[str]) -> list[str]:
  """absl's flag parsing, with one-line errors (exit status 2) instead of tracebacks."""
  try:
    rest = flags.FLAGS(argv)
  except flags.Error as e:
    fail(_flag_error_text(str(e)), errors.UsageError.exit_status)
  except (AttributeError, KeyError) as e:
    # ml_collections' config_flags lets an unknown override key escape as these.
    fail(unknown_key_message(str(e.args[0]) if e.args else str(e), argv),
         errors.UsageError.exit_status)
  _check_config_files()
  return rest


def unknown_key_message(text: str, argv: Sequence[str]) -> str:
  """`--config.a.b: no such config key 'b' (did you mean 'c'?)` from the text of
  the KeyError or AttributeError that ml_collections raises for an unknown
  override key (the repr of its message, or the repr of that repr)."""
  for _ in range(3):  # unwrap reprs of reprs
    if len(text) >= 2 and text[0] == text[-1] and text[0] in '\'"':
      try:
        text = ast.literal_eval(text)
        continue
      except (SyntaxError, ValueError):
        pass
    break
  key = re.search(r"'([^'\s]+)'", text)
  name = key.group(1) if key else text.strip().splitlines()[0] if text.strip() else '?'
  hint = re.search(r'Did you mean "([^"]+)"', text)
  arg = next((a for a in argv[1:] if re.search(
      rf'\.{re.escape(name)}(\.|=|$)', a.lstrip('-').split('=', 1)[0] + '=')), None)
  message = f'no such config key {name!r}'
  if arg:
    message = f'{arg.split("=", 1)[0]}: {message}'
  if hint:
    message += f' (did you mean {hint.group(1)!r}?)'
  return message


def _check_config_files() -> None:
  """A config file that did not load (config_flags defers the error to first use)."""
  for name in list(flags.FLAGS):
    value = flags.FLAGS[name].value
    error = getattr(value, '_error', None) if type(value).__name__ == '_ErrorConfig' else None
    if error is not None:
      fail(f'--{name}: ' + _flag_error_text(str(error)), errors.UsageError.exit_status)


def _flag_error_text(text: str) -> str:
  """One or two lines of an absl flag error (config files' errors come nested)."""
  lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
  if text.startswith('Failed loading config file') or 'Traceback' in text:
    # The last line is the reason (`[Errno 2] No such file ...` or the config's own error).
    flag = re.match(r'flag (--\S+?)=', lines[0])
    reason = lines[-1]
    return f'{flag.group(1) + ": " if flag else ""}{reason}'
  text = re.sub(r'^flag (--)', r'\1', ' '.join(lines[:2]))
  text = re.sub(r"invalid literal for int\(\) with base 10: (.*)$", r'expected an int, got \1',
                text)
  return re.sub(r'could not convert string to float: (.*)$', r'expected a float, got \1', text)
