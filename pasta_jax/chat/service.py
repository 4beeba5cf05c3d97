"""The chat-completions service: requests through the official `openai` client,
with our own retries, a shared Retry-After pause, the reply cache and counters.

The client is made with `max_retries=0`; `Service.complete` retries by itself
(docs/annotation.md, "Retries"): on 408, 409, 429 and 5xx statuses, timeouts,
connection errors and unreadable replies (not JSON, no `choices[0].message`, content
that is not a string), up to `Retry.max_retries` times, waiting
`Retry.delay` (exponential backoff with jitter, or the service's Retry-After).
401, 403 and 404 stop the whole run (a key, a permission, a base URL or a model
that is wrong for every request); other statuses fail that request only.

With `top_logprobs=k > 0` the requests ask for the log-probabilities of each
reply token and its k likeliest alternatives (`logprobs=True`), and a reply that
carries them keeps them under 'logprobs' (the judge's confidence, docs/judge.md).
"""

from __future__ import annotations

import collections
import dataclasses
import email.utils
import json
import logging
import random
import threading
import time
from typing import Any, Callable

from pasta_jax.chat import cache as cache_lib

# Statuses that stop the run: every other request would get the same answer.
FATAL_STATUSES = (401, 403, 404)
RETRY_STATUSES = (408, 409, 429)




def fatal_hints(*, base_url: str = '--base_url', api_key: str = '--api_key',
                model: str = '--model') -> dict[int, str]:
  """What to check after a fatal status, naming the flags that set the service."""
  return {401: f'check the API key ({api_key} or OPENAI_API_KEY)',
          403: 'the key may not use this model or endpoint',
          404: f'check {base_url} (it ends in /v1 for most services) and {model}'}


def quiet_client_logs() -> None:
  """Keeps the client's libraries from logging a line per request."""
  for name in ('openai', 'httpx', 'httpx2', 'httpcore', 'httpcore2'):
    logging.getLogger(name).setLevel(logging.WARNING)


class RequestFailed(Exception):
  """A request that did not get an answer: `kind` ('429', 'timeout', ...), `detail`,
  and `fatal` when the whole run must stop."""

  def __init__(self, kind: str, detail: str, *, fatal: bool = False, retryable: bool = False,
               retry_after: float | None = None):
    self.kind, self.detail, self.fatal = kind, detail, fatal
    self.retryable, self.retry_after = retryable, retry_after
    super().__init__(f'{kind}: {detail}')


@dataclasses.dataclass(frozen=True)
class Retry:
  """How failed requests are retried.

  Attempt k (0-based) waits the service's Retry-After when it sent one (at most
  `max_retry_after` seconds), else `d / 2 + uniform(0, d / 2)` seconds with
  `d = min(max_backoff, initial_backoff * 2**k)` ("equal jitter").
  """

  max_retries: int = 6
  initial_backoff: float = 1.0
  max_backoff: float = 60.0
  max_retry_after: float = 600.0

  def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
    if retry_after is not None:
      return min(max(retry_after, 0.0), self.max_retry_after)
    d = min(self.max_backoff, self.initial_backoff * 2 ** attempt)
    return d / 2 + rng.uniform(0, d / 2)


class Counters:
  """Thread-safe counts of a run's requests and tokens."""

  def __init__(self):
    self._lock = threading.Lock()
    self.requests = 0        # HTTP requests sent (each retry is one)
    self.answered = 0        # requests that got a reply
    self.cached = 0          # replies taken from the cache instead
    self.retries = collections.Counter()   # kind -> retries after it
    self.failures = collections.Counter()  # kind -> requests given up on
    self.prompt_tokens = 0
    self.completion_tokens = 0

  def add(self, **counts: int) -> None:
    with self._lock:
      for name, value in counts.items():
        setattr(self, name, getattr(self, name) + value)

  def count(self, counter: str, kind: str) -> None:
    with self._lock:
      getattr(self, counter)[kind] += 1

  def summary(self) -> str:
    with self._lock:
      retries = sum(self.retries.values())
      retried = f' ({_kinds(self.retries)})' if retries else ''
      failed = (f'; {sum(self.failures.values())} failed after retries '
                f'({_kinds(self.failures)})' if self.failures else '')
      return (f'requests: {self.requests} sent, {self.answered} answered, {retries} '
              f'retries{retried}{failed}; {self.cached} replies from the cache; tokens: '
              f'{self.prompt_tokens:,} prompt + {self.completion_tokens:,} completion')


def _kinds(counter: collections.Counter) -> str:
  return ', '.join(f'{kind}: {n}' for kind, n in sorted(counter.items()))


def retry_after_seconds(headers: Any) -> float | None:
  """The wait a response asks for: `retry-after-ms`, or `retry-after` in seconds or
  as an HTTP date; None when it asks for none (or says nothing readable)."""
  if headers is None:
    return None
  value = headers.get('retry-after-ms')
  if value is not None:
    try:
      return float(value) / 1000
    except ValueError:
      pass
  value = headers.get('retry-after')
  if value is None:
    return None
  try:
    return float(value)
  except ValueError:
    pass
  try:
    when = email.utils.parsedate_to_datetime(value)
  except (TypeError, ValueError):
    return None
  return max(0.0, when.timestamp() - time.time())


def _failure(error: Exception, hints: dict[int, str]) -> RequestFailed:
  """The `RequestFailed` of an exception the client raised."""
  import openai  # pylint: disable=g-import-not-at-top
  if isinstance(error, openai.APITimeoutError):
    return RequestFailed('timeout', 'no reply within --timeout', retryable=True)
  if isinstance(error, openai.APIConnectionError):
    cause = error.__cause__ or error
    return RequestFailed('connection', f'{type(cause).__name__}: {cause}', retryable=True)
  if isinstance(error, openai.APIStatusError):
    status = error.status_code
    body = error.body
    text = str(body['message'] if isinstance(body, dict) and body.get('message')
               else body if isinstance(body, str) and body else error.message)[:300]
    if status in FATAL_STATUSES:
      return RequestFailed(str(status), f'{text} ({hints[status]})', fatal=True)
    return RequestFailed(str(status), text,
                         retryable=status in RETRY_STATUSES or status >= 500,
                         retry_after=retry_after_seconds(error.response.headers))
  if isinstance(error, openai.APIResponseValidationError):
    return RequestFailed('bad-response', str(error)[:300], retryable=True)
  raise error


class Service:
  """One OpenAI-compatible chat-completions endpoint and model.

  Attributes:
    model: the model name sent with every request.
    settings: the other request fields (temperature; max_tokens when set;
      logprobs and top_logprobs when `top_logprobs` > 0).
    hints: what a fatal status's message tells the user to check (`fatal_hints`).
  """

  def __init__(self, *, base_url: str, api_key: str, model: str, timeout: float,
               retry: Retry = Retry(), temperature: float = 0.0,
               max_tokens: int | None = None, top_logprobs: int = 0,
               cache: cache_lib.Cache | None = None,
               counters: Counters | None = None, prompt_version: int = 0,
               sleep: Callable[[float], None] | None = None, seed: int | None = None,
               hints: dict[int, str] | None = None):
    import openai  # pylint: disable=g-import-not-at-top
    self._client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout,
                                 max_retries=0)
    self.model = model
    self.settings: dict[str, Any] = {'temperature': temperature}
    if max_tokens is not None:
      self.settings['max_tokens'] = max_tokens
    if top_logprobs:
      self.settings.update(logprobs=True, top_logprobs=top_logprobs)
    self.hints = hints or fatal_hints()
    self.retry = retry
    self.cache = cache
    self.counters = counters or Counters()
    self.prompt_version = prompt_version
    self._stopped = threading.Event()
    # Waits end early when the run stops (`stop`); tests may pass their own.
    self._sleep = sleep or self._stopped.wait
    self._rng = random.Random(seed)
    self._pause_lock = threading.Lock()
    self._paused_until = 0.0  # monotonic time: no request before it (Retry-After)

  def key(self, messages: list[dict[str, str]]) -> str:
    return cache_lib.request_key({'model': self.model, 'settings': self.settings,
                                  'prompt_version': self.prompt_version,
                                  'messages': messages})

  def complete(self, messages: list[dict[str, str]]) -> dict[str, Any]:
    """The reply to a chat: {'content', 'finish_reason', 'usage'} and, when the
    service sent them, 'logprobs' (`token_logprobs`); from the cache when it has it.
    Raises `RequestFailed` once the retries are spent."""
    if self.cache is None:
      return self._request(messages)
    reply, cached = self.cache.get_or_compute(self.key(messages),
                                              lambda: self._request(messages))
    if cached:
      self.counters.add(cached=1)
    return reply

  def stop(self) -> None:
    """Makes waiting and later requests give up (a fatal error stopped the run)."""
    self._stopped.set()

  def close(self) -> None:
    self._client.close()

  def _wait_for_pause(self) -> None:
    with self._pause_lock:
      wait = self._paused_until - time.monotonic()
    if wait > 0 and not self._stopped.is_set():
      self._sleep(wait)

  def _pause(self, seconds: float) -> None:
    with self._pause_lock:
      self._paused_until = max(self._paused_until, time.monotonic() + seconds)

  def _request(self, messages: list[dict[str, str]]) -> dict[str, Any]:
    attempt = 0
    while True:
      self._wait_for_pause()
      if self._stopped.is_set():
        raise RequestFailed('stopped', 'the run was stopped', fatal=True)
      self.counters.add(requests=1)
      try:
        return self._send(messages)
      except RequestFailed as failure:
        if failure.fatal or not failure.retryable or attempt >= self.retry.max_retries:
          self.counters.count('failures', failure.kind)
          raise
        self.counters.count('retries', failure.kind)
        delay = self.retry.delay(attempt, failure.retry_after, self._rng)
        if failure.retry_after is not None:
          self._pause(delay)  # every thread waits for a Retry-After (at the loop's top)
        else:
          self._sleep(delay)
        attempt += 1

  def _send(self, messages: list[dict[str, str]]) -> dict[str, Any]:
    import openai  # pylint: disable=g-import-not-at-top
    try:
      completion = self._client.chat.completions.create(
          model=self.model, messages=messages, **self.settings)
    except openai.OpenAIError as e:
      raise _failure(e, self.hints) from e
    except json.JSONDecodeError as e:  # a body that says it is JSON but is not
      raise RequestFailed('bad-response', f'the reply is not JSON: {e}', retryable=True) from e
    choices = getattr(completion, 'choices', None)
    if not choices or getattr(choices[0], 'message', None) is None:
      raise RequestFailed('bad-response', f'a reply without choices[0].message: '
                          f'{str(completion)[:200]}', retryable=True)
    content = choices[0].message.content
    if content is not None and not isinstance(content, str):
      raise RequestFailed('bad-response', f'choices[0].message.content is a '
                          f'{type(content).__name__}, not a string', retryable=True)
    usage = getattr(completion, 'usage', None)
    tokens = {'prompt_tokens': getattr(usage, 'prompt_tokens', 0) or 0,
              'completion_tokens': getattr(usage, 'completion_tokens', 0) or 0}
    self.counters.add(answered=1, **tokens)
    reply = {'content': content, 'finish_reason': choices[0].finish_reason, 'usage': tokens}
    logprobs = token_logprobs(getattr(choices[0], 'logprobs', None))
    if logprobs is not None:
      reply['logprobs'] = logprobs
    return reply


def token_logprobs(choice_logprobs: Any) -> list[dict[str, Any]] | None:
  """A choice's `logprobs.content` as plain JSON (what the cache stores): per reply
  token `{'token', 'logprob', 'top': [[token, logprob], ...]}`; None when the
  service sent none (it ignored the request, or was not asked)."""
  content = getattr(choice_logprobs, 'content', None)
  if not content:
    return None
  out = []
  for item in content:
    top = [[t.token, float(t.logprob)] for t in (getattr(item, 'top_logprobs', None) or ())
           if isinstance(getattr(t, 'token', None), str)
           and isinstance(getattr(t, 'logprob', None), (int, float))]
    if not (isinstance(getattr(item, 'token', None), str)
            and isinstance(getattr(item, 'logprob', None), (int, float))):
      return None  # not the protocol's shape: treated as absent
    out.append({'token': item.token, 'logprob': float(item.logprob), 'top': top})
  return out
