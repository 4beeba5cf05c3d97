"""The command-line flags of a chat-completions service, defined once per prefix.

`python -m pasta_jax.annotate` and `python -m pasta_jax.judge` define them without a
prefix (`--model`, `--base_url`, ...); `python -m pasta_jax.evaluate` with the prefix
`judge_` (`--judge_base_url`, ...), its model flag being `--judge` itself, so that
naming a judge model is what turns judging on.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

from absl import flags

from pasta_jax import cli
from pasta_jax import errors
from pasta_jax.chat import cache as cache_lib
from pasta_jax.chat import service as service_lib

NAMES = {'base_url': '--base_url', 'api_key': '--api_key', 'model': '--model'}


def check_service(model: str | None, api_key: str | None, what: str,
                  names: Mapping[str, str] = NAMES) -> None:
  """A UsageError naming the flags of what is missing (`what` needs them)."""
  missing = [name for name, value in (
      (names['model'], model),
      (f'{names["api_key"]} or OPENAI_API_KEY (any value for a service without keys)',
       api_key)) if not value]
  if missing:
    raise errors.UsageError(f'{what} needs {" and ".join(missing)}')


@dataclasses.dataclass(frozen=True)
class Settings:
  """Where the requests go and how they are sent and retried (`ServiceFlags.settings`).

  `names` are the flags that set base_url, api_key and model (for error messages).
  """

  base_url: str | None
  api_key: str | None
  model: str | None
  concurrency: int = 8
  timeout: float = 120.0
  retry: service_lib.Retry = service_lib.Retry()
  temperature: float = 0.0
  max_tokens: int | None = None
  names: Mapping[str, str] = dataclasses.field(default_factory=lambda: dict(NAMES))

  def check(self, what: str) -> None:
    """A UsageError unless the model and a key are set."""
    check_service(self.model, self.api_key, what, self.names)

  def service(self, *, cache: cache_lib.Cache | None, counters: service_lib.Counters,
              prompt_version: int, **kwargs: Any) -> service_lib.Service:
    """The service these settings describe (`kwargs`: e.g. top_logprobs)."""
    return service_lib.Service(base_url=self.base_url, api_key=self.api_key, model=self.model,
                               timeout=self.timeout, retry=self.retry,
                               temperature=self.temperature, max_tokens=self.max_tokens,
                               cache=cache, counters=counters, prompt_version=prompt_version,
                               hints=service_lib.fatal_hints(**self.names), **kwargs)


class ServiceFlags:
  """`--{prefix}base_url`, `--{prefix}api_key`, the model flag, `--{prefix}concurrency`,
  `--{prefix}timeout`, the retry flags, `--{prefix}temperature` and
  `--{prefix}max_tokens` (each defined once per process, `cli.define`)."""

  def __init__(self, prefix: str = '', *, model_flag: str | None = None,
               model_help: str = 'Model name sent with every request.',
               max_tokens: int | None = None):
    p = prefix
    self.prefix = prefix
    self.base_url = cli.define(flags.DEFINE_string, f'{p}base_url', None,
                               'Chat-completions base URL, e.g. http://localhost:8000/v1 '
                               '(default: $OPENAI_BASE_URL).')
    self.api_key = cli.define(flags.DEFINE_string, f'{p}api_key', None,
                              'API key (default: $OPENAI_API_KEY).')
    self.model = cli.define(flags.DEFINE_string, model_flag or f'{p}model', None, model_help)
    self.concurrency = cli.define(flags.DEFINE_integer, f'{p}concurrency', 8,
                                  'Requests in flight at once.')
    self.timeout = cli.define(flags.DEFINE_float, f'{p}timeout', 120.0,
                              'Seconds one request may take.')
    self.max_retries = cli.define(flags.DEFINE_integer, f'{p}max_retries', 6,
                                  'Retries of a request after 408, 409, 429, 5xx, a timeout '
                                  'or a connection error.')
    self.initial_backoff = cli.define(flags.DEFINE_float, f'{p}initial_backoff', 1.0,
                                      'Seconds before the first retry (doubling, with jitter).')
    self.max_backoff = cli.define(flags.DEFINE_float, f'{p}max_backoff', 60.0,
                                  'Longest wait between retries (a Retry-After is honoured '
                                  'up to 600 s).')
    self.temperature = cli.define(flags.DEFINE_float, f'{p}temperature', 0.0,
                                  'Sampling temperature.')
    self.max_tokens = cli.define(flags.DEFINE_integer, f'{p}max_tokens', max_tokens,
                                 "Longest reply in tokens (unset: the service's).")

  def check(self) -> None:
    """UsageErrors for values out of range."""
    cli.check_positive(self.concurrency, self.max_tokens)
    cli.check_flag(self.max_retries, self.max_retries.value >= 0, 'an int >= 0')
    cli.check_flag(self.timeout, self.timeout.value > 0, 'a number of seconds > 0')
    for flag in (self.initial_backoff, self.max_backoff, self.temperature):
      cli.check_flag(flag, flag.value >= 0, 'a number >= 0')

  def settings(self) -> Settings:
    """The flags' values, the base URL and key taken from the environment when unset."""
    self.check()
    return Settings(
        base_url=self.base_url.value or os.environ.get('OPENAI_BASE_URL') or None,
        api_key=self.api_key.value or os.environ.get('OPENAI_API_KEY') or None,
        model=self.model.value, concurrency=self.concurrency.value,
        timeout=self.timeout.value,
        retry=service_lib.Retry(max_retries=self.max_retries.value,
                                initial_backoff=self.initial_backoff.value,
                                max_backoff=self.max_backoff.value),
        temperature=self.temperature.value, max_tokens=self.max_tokens.value,
        names={key: f'--{holder.name}' for key, holder in (
            ('base_url', self.base_url), ('api_key', self.api_key), ('model', self.model))})
