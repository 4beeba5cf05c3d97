"""The service through the real `openai` client against a scripted local server:
retries (429 with Retry-After, 5xx, timeouts, dropped connections, replies without
choices), fatal statuses, the reply cache and its files."""

import random
import threading

import pytest

from pasta_jax import errors
from pasta_jax.chat import cache as cache_lib
from pasta_jax.chat import service as service_lib
from tests.annotation import chat_server

CHAT = [{'role': 'user', 'content': 'Answer to annotate (copy it exactly, adding only '
         'PASTA-LANG tags):\n- a\n- b'}]


def scripted(*actions):
  """A script that plays `actions` in order, then answers correctly."""
  def script(request):
    if request.number <= len(actions):
      return actions[request.number - 1]
    return chat_server.rules_answer(request)
  return script


def service(server, slept=None, **kwargs):
  kwargs.setdefault('retry', service_lib.Retry(max_retries=3, initial_backoff=0.01))
  return service_lib.Service(base_url=server.url, api_key='test-key', model='m',
                             timeout=kwargs.pop('timeout', 5.0),
                             sleep=None if slept is None else slept.append, seed=0, **kwargs)


def test_429_with_retry_after_then_500_then_an_answer():
  slept = []
  with chat_server.ChatServer(scripted(
      chat_server.Error(429, headers={'Retry-After': '7'}), chat_server.Error(503))) as server:
    svc = service(server, slept, retry=service_lib.Retry(initial_backoff=0.5))
    reply = svc.complete(CHAT)
  assert reply == {'content': '<promise topic="a" tokens="1"/><async>- a\n</async>'
                   '<promise topic="b" tokens="1"/><async>- b</async>',
                   'finish_reason': 'stop',
                   'usage': {'prompt_tokens': 100, 'completion_tokens': 20}}
  assert server.count() == 3 and server.received[0].body['model'] == 'm'
  assert slept[0] == pytest.approx(7, abs=0.5)  # the Retry-After, not the backoff
  backoffs = [s for s in slept if s < 5]
  assert len(backoffs) == 1 and 0.5 <= backoffs[0] <= 1.0  # attempt 1: 1 s, jittered
  c = svc.counters
  assert (c.requests, c.answered, dict(c.retries), c.prompt_tokens, c.completion_tokens) == (
      3, 1, {'429': 1, '503': 1}, 100, 20)


def test_timeouts_dropped_connections_and_replies_without_choices_are_retried():
  with chat_server.ChatServer(scripted(
      chat_server.Slow(3.0, chat_server.Answer('late')), chat_server.DROP,
      chat_server.Raw({'id': 'x', 'object': 'chat.completion', 'choices': []}),
      chat_server.Raw(b'not json'),
      chat_server.Raw({'choices': [{'index': 0, 'message': {'content': 5}}]}))) as server:
    svc = service(server, timeout=1.0, retry=service_lib.Retry(max_retries=5,
                                                               initial_backoff=0.01))
    reply = svc.complete(CHAT)
  assert reply['content'].startswith('<promise')
  assert dict(svc.counters.retries) == {'timeout': 1, 'connection': 1, 'bad-response': 3}
  assert server.count() == 6


def test_retries_run_out():
  with chat_server.ChatServer(lambda r: chat_server.Error(500, 'overloaded')) as server:
    svc = service(server)
    with pytest.raises(service_lib.RequestFailed) as info:
      svc.complete(CHAT)
  assert (info.value.kind, info.value.fatal) == ('500', False)
  assert 'overloaded' in info.value.detail
  assert server.count() == 4 and dict(svc.counters.failures) == {'500': 1}


@pytest.mark.parametrize('status,fatal,hint', [
    (400, False, 'scripted error'), (401, True, 'OPENAI_API_KEY'), (403, True, 'may not use'),
    (404, True, '--base_url')])
def test_statuses_that_are_not_retried(status, fatal, hint):
  with chat_server.ChatServer(lambda r: chat_server.Error(status)) as server:
    svc = service(server)
    with pytest.raises(service_lib.RequestFailed) as info:
      svc.complete(CHAT)
  assert (info.value.kind, info.value.fatal, server.count()) == (str(status), fatal, 1)
  assert hint in info.value.detail


def test_wrong_base_url_is_fatal():
  with chat_server.ChatServer() as server:
    svc = service_lib.Service(base_url=server.url[:-len('/v1')], api_key='k', model='m',
                              timeout=5)
    with pytest.raises(service_lib.RequestFailed, match='check --base_url') as info:
      svc.complete(CHAT)
  assert info.value.fatal and server.paths == ['/chat/completions']


def test_connection_refused_is_retried_then_fails():
  with chat_server.ChatServer() as server:
    url = server.url
  svc = service_lib.Service(base_url=url, api_key='k', model='m', timeout=2,
                            retry=service_lib.Retry(max_retries=1, initial_backoff=0.01))
  with pytest.raises(service_lib.RequestFailed) as info:
    svc.complete(CHAT)
  assert info.value.kind == 'connection' and svc.counters.requests == 2


def test_cache_answers_again_without_asking(tmp_path):
  path = str(tmp_path / 'cache.jsonl')
  with chat_server.ChatServer() as server:
    first = service(server, cache=cache_lib.Cache(path))
    reply = first.complete(CHAT)
    assert first.complete(CHAT) == reply and first.counters.cached == 1
    first.cache.close()
    second = service(server, cache=cache_lib.Cache(path))
    assert second.complete(CHAT) == reply
    other_model = service_lib.Service(base_url=server.url, api_key='k', model='m2', timeout=5,
                                      cache=second.cache)
    other_model.complete(CHAT)
    assert server.count() == 2  # once per model
    assert len(cache_lib.Cache(path)) == 2


def test_requests_in_flight_with_the_same_key_are_sent_once(tmp_path):
  with chat_server.ChatServer(lambda r: chat_server.Slow(
      0.3, chat_server.rules_answer(r))) as server:
    svc = service(server, cache=cache_lib.Cache(str(tmp_path / 'c.jsonl')))
    replies = []
    threads = [threading.Thread(target=lambda: replies.append(svc.complete(CHAT)))
               for _ in range(4)]
    for t in threads:
      t.start()
    for t in threads:
      t.join()
  assert server.count() == 1 and len(replies) == 4 and len(set(map(str, replies))) == 1
  assert svc.counters.cached == 3


def test_cache_file_cut_short_is_repaired_and_damage_is_named(tmp_path):
  path = tmp_path / 'cache.jsonl'
  good = '{"key": "a", "reply": {"content": "x"}}\n'
  path.write_text(good + '{"key": "b", "rep')  # a killed run's last write
  cache = cache_lib.Cache(str(path))
  assert len(cache) == 1 and path.read_text() == good
  cache.put('c', {'content': 'y'})
  cache.close()
  assert len(cache_lib.Cache(str(path))) == 2
  path.write_text(good + '{"key": "d", "reply": {}}')  # whole, without its newline
  assert len(cache_lib.Cache(str(path))) == 2 and path.read_text().endswith('{}}\n')
  path.write_text('oops\n' + good)
  with pytest.raises(errors.DataError, match=rf'^{path}:1: damaged cache line'):
    cache_lib.Cache(str(path))


def test_retry_delays():
  retry = service_lib.Retry(initial_backoff=1, max_backoff=5, max_retry_after=30)
  rng = random.Random(0)
  for attempt, d in enumerate([1, 2, 4, 5, 5]):
    delays = [retry.delay(attempt, None, rng) for _ in range(50)]
    assert all(d / 2 <= x <= d for x in delays) and len(set(delays)) > 1
  assert retry.delay(3, 12.5, rng) == 12.5 and retry.delay(0, 100, rng) == 30


def test_retry_after_header_forms():
  assert service_lib.retry_after_seconds({'retry-after': '3'}) == 3
  assert service_lib.retry_after_seconds({'retry-after-ms': '250', 'retry-after': '9'}) == 0.25
  assert service_lib.retry_after_seconds({'retry-after': 'soon'}) is None
  assert service_lib.retry_after_seconds({}) is None
  later = service_lib.retry_after_seconds({'retry-after': 'Wed, 21 Oct 2099 07:28:00 GMT'})
  assert later > 1e8
  assert service_lib.retry_after_seconds({'retry-after': 'Wed, 21 Oct 2015 07:28:00 GMT'}) == 0
