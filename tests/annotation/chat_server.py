"""A real HTTP server on 127.0.0.1 that speaks the chat-completions protocol, scripted
per test: `ChatServer(script)` answers each `POST /v1/chat/completions` with what
`script(request)` returns (an `Answer`, with log-probabilities or without, an `Error`,
a `Slow` answer, a `Raw` payload or `DROP`). The annotator's and the judge's tests
(tests/test_judge.py) share it.

`Request` gives a script what it needs: the response being annotated, whether the
request asks for a fix (and the error shown), the model; `rules_answer` is a correct
annotation (the rules annotator's). The server records every request it received
and every request it answered (by the sha256 of its body).
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import json
import os
import signal
import threading
import time
from typing import Any, Callable

from pasta_jax import lang
from pasta_jax.annotation import rules

ANSWER_MARK = 'adding only PASTA-LANG tags):\n'
FIX_MARK = 'Your annotation is not valid: '


@dataclasses.dataclass(frozen=True)
class Request:
  body: dict[str, Any]
  number: int  # 1-based, in arrival order
  time: float  # time.monotonic() at arrival

  @property
  def messages(self) -> list[dict[str, str]]:
    return self.body['messages']

  @property
  def key(self) -> str:
    return hashlib.sha256(json.dumps(self.body, sort_keys=True).encode()).hexdigest()

  @property
  def response(self) -> str:
    """The response being annotated (the last user turn that carries one)."""
    for message in reversed(self.messages):
      if message['role'] == 'user' and ANSWER_MARK in message['content']:
        return message['content'].split(ANSWER_MARK, 1)[1]
    raise AssertionError('no response in the chat')

  @property
  def fix(self) -> str | None:
    """The validation error shown, when this request asks for a fix."""
    last = self.messages[-1]['content']
    return last[len(FIX_MARK):] if last.startswith(FIX_MARK) else None


@dataclasses.dataclass(frozen=True)
class Answer:
  """A 200 reply; `logprobs`: per reply token (token, logprob, [(alternative,
  logprob), ...]), sent as `choices[0].logprobs.content` (None: no logprobs)."""

  content: str | None
  finish_reason: str = 'stop'
  prompt_tokens: int = 100
  completion_tokens: int = 20
  logprobs: tuple[tuple[str, float, tuple[tuple[str, float], ...]], ...] | None = None

  def choice_logprobs(self) -> dict[str, Any] | None:
    if self.logprobs is None:
      return None
    entry = lambda token, logprob: {'token': token, 'logprob': logprob,  # noqa: E731
                                    'bytes': list(token.encode())}
    return {'content': [dict(entry(token, logprob), top_logprobs=[entry(*t) for t in top])
                        for token, logprob, top in self.logprobs], 'refusal': None}


@dataclasses.dataclass(frozen=True)
class Error:
  status: int
  message: str = 'scripted error'
  headers: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Slow:
  seconds: float
  answer: Answer


@dataclasses.dataclass(frozen=True)
class Raw:
  """A 200 reply with this payload as it is (e.g. no `choices`; bytes: not JSON)."""

  payload: dict[str, Any] | bytes


DROP = 'drop'  # close the connection without a response


def killing(number: int, run: dict[str, Any], script: Callable[[Request], Any]
            ) -> Callable[[Request], Any]:
  """`script`, except that request `number`, while `run['process']` is set, kills that
  process (SIGKILL) and is dropped: a run killed while it waits for a reply."""
  def kill_or_answer(request: Request) -> Any:
    if request.number == number and 'process' in run:
      os.kill(run['process'].pid, signal.SIGKILL)
      return DROP
    return script(request)
  return kill_or_answer


def rules_answer(request: Request) -> Answer:
  """A correct annotation of the request's response."""
  return Answer(lang.serialize(rules.annotate(request.response)))


class ChatServer:
  """The server; use as a context manager. `url` is the base URL (ends in /v1)."""

  def __init__(self, script: Callable[[Request], Any] = rules_answer):
    self.script = script
    self.received: list[Request] = []
    self.answered: list[str] = []  # keys of the requests answered with 200
    self.paths: list[str] = []
    self._lock = threading.Lock()
    server = self

    class Handler(http.server.BaseHTTPRequestHandler):
      protocol_version = 'HTTP/1.1'

      def log_message(self, *args):  # quiet
        del args

      def do_POST(self):  # noqa: N802
        length = int(self.headers.get('content-length', 0))
        body = json.loads(self.rfile.read(length))
        with server._lock:  # pylint: disable=protected-access
          server.paths.append(self.path)
          request = Request(body, len(server.received) + 1, time.monotonic())
          server.received.append(request)
        if self.path != '/v1/chat/completions':
          return self._send(404, {'error': {'message': f'no route {self.path}'}})
        action = server.script(request)
        if action == DROP:
          self.close_connection = True
          return
        if isinstance(action, Slow):
          time.sleep(action.seconds)
          action = action.answer
        if isinstance(action, Raw):
          return self._send(200, action.payload)
        if isinstance(action, Error):
          return self._send(action.status, {'error': {'message': action.message,
                                                      'type': 'scripted'}}, action.headers)
        payload = {
            'id': f'chatcmpl-{request.number}', 'object': 'chat.completion', 'created': 0,
            'model': body.get('model'),
            'choices': [{'index': 0, 'finish_reason': action.finish_reason,
                         'message': {'role': 'assistant', 'content': action.content},
                         'logprobs': action.choice_logprobs()}],
            'usage': {'prompt_tokens': action.prompt_tokens,
                      'completion_tokens': action.completion_tokens,
                      'total_tokens': action.prompt_tokens + action.completion_tokens}}
        if self._send(200, payload):
          with server._lock:  # pylint: disable=protected-access
            server.answered.append(request.key)

      def _send(self, status, payload, headers=None) -> bool:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        try:
          self.send_response(status)
          self.send_header('content-type', 'application/json')
          self.send_header('content-length', str(len(data)))
          for name, value in (headers or {}).items():
            self.send_header(name, value)
          self.end_headers()
          self.wfile.write(data)
          self.wfile.flush()
          return True
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
          return False

    self._httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    self._httpd.daemon_threads = True
    self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.02,),
                                    daemon=True)

  @property
  def url(self) -> str:
    return f'http://127.0.0.1:{self._httpd.server_address[1]}/v1'

  def __enter__(self) -> 'ChatServer':
    self._thread.start()
    return self

  def __exit__(self, *exc) -> None:
    self._httpd.shutdown()
    self._httpd.server_close()

  def count(self, predicate: Callable[[Request], bool] = lambda r: True) -> int:
    with self._lock:
      return sum(1 for r in self.received if predicate(r))
