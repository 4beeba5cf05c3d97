"""The user's mistakes, as exceptions that the command lines turn into exit statuses.

A `UserError` is something the user can fix (a config key, a file, a flag, a
damaged run directory); its message names the problem and what to do, in one or
two lines. Every command line (`pasta_jax.cli.run`) prints `error: MESSAGE` for
it and exits with its class's status; anything else is a bug and keeps its
traceback. The statuses (also in docs/training.md, "Bad input"):

  1  a bug (a traceback), or absl's own flag-parsing failure
  2  UsageError, ConfigError: a flag, a config key or a value
  3  DataError: an input file or dataset (JSONL lines, prompts, lengths)
  4  CheckpointError: a run directory or checkpoint that is missing or damaged
  5  TrainingDiverged: a non-finite loss or gradient norm stopped training
  6  ResourceError: the machine ran out of something (disk space)
  7  ServiceError: a remote service (the annotator's chat-completions API) refused
     the requests or kept failing after the retries
"""

from __future__ import annotations


class UserError(Exception):
  """A mistake the user can fix; `exit_status` is what a command line exits with."""

  exit_status = 2


class UsageError(UserError, ValueError):
  """A command-line flag that is missing, malformed or out of range."""

  exit_status = 2


class DataError(UserError, ValueError):
  """An input file or dataset that cannot be used as it is (names the file)."""

  exit_status = 3


class CheckpointError(UserError):
  """A run directory or checkpoint that is missing or damaged (says what else exists)."""

  exit_status = 4


class TrainingDiverged(UserError):
  """Training met a non-finite loss or gradient norm and stopped before saving it."""

  exit_status = 5


class ResourceError(UserError):
  """The machine ran out of something the job needs (names what and where)."""

  exit_status = 6


class ServiceError(UserError):
  """A remote service refused the requests or kept failing after the retries (says
  how many, why, and that running the same command again retries only those)."""

  exit_status = 7
