"""The pairwise LLM judge: an answer against the sequential model's (docs/judge.md).

    judge = Judge(service)                      # a `chat.service.Service`
    j = judge.judge(prompt, answer, baseline)   # j.win in [0, 1], or None
    judgements = judge_many(judge, [(prompt, answer, baseline), ...], concurrency=8)

The judge sees the prompt and two answers, A and B, and replies with one letter:
A, B, or T for a tie (`VERDICTS`). Every pair is judged in both orders, the answer
first (A) then the baseline first, so that a preference for a position cancels
(docs/design.md section 8):

- In one order, the preference for answer A is `p_A + p_T / 2`, where (p_A, p_B,
  p_T) are the judge's probabilities of the three verdicts at the verdict token:
  the exponentiated log-probabilities of the top alternatives that read as a
  verdict, renormalised to sum to 1 (`verdict_probabilities`). When the service
  sends no log-probabilities (or none of the alternatives is a verdict), the reply's
  verdict counts alone: 1 for A, 0 for B, 1/2 for T.
- The answer's win = (preference for A with the answer as A + 1 - preference for A
  with the baseline as A) / 2: 1 when the judge is sure the answer is better in both
  orders, 0 when sure it is worse, 1/2 for a tie or for a judge that always picks
  the same position.

A reply that is not a verdict is asked for again with the problem shown
(`fix_attempts` times); a pair with an order still malformed after that is
'invalid' and a pair with a request that failed after its retries is 'failed':
neither gets a win (never a silent tie), and both are counted (`summarize`).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import math
import sys
from typing import Any, Iterable, Iterator, Mapping, Sequence

from pasta_jax import errors
from pasta_jax.chat import cache as cache_lib
from pasta_jax.chat import flags as chat_flags
from pasta_jax.chat import service as service_lib

PROMPT_VERSION = 1  # part of every request's cache key: change it with the prompt
VERDICTS = ('A', 'B', 'T')
JUDGED, INVALID, FAILED = 'judged', 'invalid', 'failed'
OUTCOMES = (JUDGED, INVALID, FAILED)
FROM_LOGPROBS, FROM_VERDICT = 'logprobs', 'verdict'
DEFAULT_TOP_LOGPROBS = 5
DEFAULT_MAX_TOKENS = 16

SYSTEM = (
    "You are an impartial judge of answers to a user's request. You are shown the request "
    'and two answers, A and B. Decide which answer serves the request better: correct, '
    'complete, relevant and clear. Length is no merit in itself, and the order of the '
    'answers says nothing about them. Reply with one letter and nothing else: A if answer '
    'A is better, B if answer B is better, T if they are equally good.')
_FIX = ('Your reply is not a verdict: {problem}. Reply with one letter and nothing else: '
        'A, B or T.')
# Characters around a verdict that do not change it ("[[A]]", "**B**", "T.").
_DECORATION = ' \t\r\n*"\'`[]().:'


class Malformed(ValueError):
  """A reply that is not a verdict; the message says why (shown to the judge)."""


def messages(prompt: str, first: str, second: str) -> list[dict[str, str]]:
  """The chat that asks for a verdict on answers A = first and B = second."""
  return [{'role': 'system', 'content': SYSTEM},
          {'role': 'user', 'content': f'[Request]\n{prompt}\n[End of request]\n\n'
                                      f'[Answer A]\n{first}\n[End of answer A]\n\n'
                                      f'[Answer B]\n{second}\n[End of answer B]\n\n'
                                      'Which answer is better? Reply with A, B or T.'}]


def fix_messages(chat: list[dict[str, str]], reply: str | None, problem: str
                 ) -> list[dict[str, str]]:
  """The chat that shows the judge its malformed reply and the problem."""
  return [*chat, {'role': 'assistant', 'content': reply or ''},
          {'role': 'user', 'content': _FIX.format(problem=problem)}]


def _verdict_of(text: str) -> str | None:
  word = text.strip(_DECORATION).upper()
  return 'T' if word == 'TIE' else word if word in VERDICTS else None


def parse_verdict(content: str | None) -> str:
  """'A', 'B' or 'T' from a reply ('tie' and decorations such as "[[A]]" allowed);
  raises `Malformed` for anything else."""
  if content is None or not content.strip():
    raise Malformed('the reply is empty')
  verdict = _verdict_of(content)
  if verdict is None:
    shown = content.strip()
    shown = shown if len(shown) <= 60 else shown[:57] + '...'
    raise Malformed(f'expected one letter, A, B or T, got {shown!r}')
  return verdict


def verdict_probabilities(logprobs: Sequence[Mapping[str, Any]] | None
                          ) -> dict[str, float] | None:
  """(p_A, p_B, p_T) at the verdict token, renormalised over the verdicts.

  The verdict token is the reply's first token that is not decoration alone
  (whitespace, brackets, quotes). Its alternatives (the token itself and its top
  log-probabilities, each distinct text counted once) that read as a verdict add
  their probabilities to it. None when there are no log-probabilities or none of
  the alternatives is a verdict.
  """
  for entry in logprobs or ():
    if not entry['token'].strip(_DECORATION):
      continue
    mass = dict.fromkeys(VERDICTS, 0.0)
    seen = set()
    for token, logprob in [(entry['token'], entry['logprob']), *entry['top']]:
      if token in seen:
        continue
      seen.add(token)
      verdict = _verdict_of(token)
      if verdict is not None and math.isfinite(logprob):
        mass[verdict] += math.exp(logprob)
    total = sum(mass.values())
    return {v: m / total for v, m in mass.items()} if total > 0 else None
  return None


def preference_for_first(verdict: str, probabilities: Mapping[str, float] | None) -> float:
  """p_A + p_T / 2, or from the verdict alone (A 1, B 0, T 1/2)."""
  if probabilities is None:
    return {'A': 1.0, 'B': 0.0, 'T': 0.5}[verdict]
  return probabilities['A'] + 0.5 * probabilities['T']


@dataclasses.dataclass(frozen=True)
class Order:
  """The judge's verdict on one order of a pair.

  Attributes:
    outcome: JUDGED, INVALID (no verdict after the fixes) or FAILED (no reply).
    verdict: 'A', 'B' or 'T' (JUDGED only).
    preference: for answer A, in [0, 1] (JUDGED only).
    confidence: FROM_LOGPROBS or FROM_VERDICT: what `preference` comes from.
    probabilities: {'A', 'B', 'T'} from the log-probabilities, when used.
    attempts: requests that got a reply (1 + fixes).
    reply: the last reply's text.
    detail: why it is INVALID or FAILED ('' when JUDGED).
  """

  outcome: str
  verdict: str | None = None
  preference: float | None = None
  confidence: str | None = None
  probabilities: dict[str, float] | None = None
  attempts: int = 0
  reply: str | None = None
  detail: str = ''

  def to_json(self) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(self).items() if v not in (None, '')}


@dataclasses.dataclass(frozen=True)
class Judgement:
  """A pair judged in both orders: `orders` = (answer as A, baseline as A).

  `win` is the answer's confidence-weighted win over the baseline in [0, 1]
  (module docstring); None unless `outcome` is JUDGED. `detail` says what went
  wrong otherwise.
  """

  outcome: str
  win: float | None
  orders: tuple[Order, Order]
  detail: str = ''

  @property
  def agree(self) -> bool | None:
    """Whether the two orders' verdicts name the same winner (or both a tie)."""
    if self.outcome != JUDGED:
      return None
    first, second = (o.verdict for o in self.orders)
    return first == {'A': 'B', 'B': 'A', 'T': 'T'}[second]

  def to_json(self) -> dict[str, Any]:
    return {'outcome': self.outcome, 'win': self.win,
            **({'agree': self.agree} if self.outcome == JUDGED else {}),
            **({'detail': self.detail} if self.detail else {}),
            'orders': [o.to_json() for o in self.orders]}


def combine(answer_first: Order, baseline_first: Order) -> Judgement:
  """The judgement of a pair from its two orders."""
  orders = (answer_first, baseline_first)
  for outcome in (FAILED, INVALID):
    bad = [(name, o) for name, o in zip(('answer first', 'baseline first'), orders)
           if o.outcome == outcome]
    if bad:
      return Judgement(outcome, None, orders,
                       '; '.join(f'{name}: {o.detail}' for name, o in bad))
  win = 0.5 * (answer_first.preference + 1.0 - baseline_first.preference)
  return Judgement(JUDGED, win, orders)


class Judge:
  """Verdicts from a chat-completions service (made with `top_logprobs` > 0 to
  weigh them by the judge's confidence; the prompt version `PROMPT_VERSION`)."""

  def __init__(self, service: service_lib.Service, *, fix_attempts: int = 1):
    self.service = service
    self.fix_attempts = fix_attempts

  def order(self, prompt: str, first: str, second: str) -> Order:
    """The verdict on A = first, B = second. Raises `RequestFailed` only when fatal."""
    chat = messages(prompt, first, second)
    attempts = 0
    while True:
      try:
        reply = self.service.complete(chat)
      except service_lib.RequestFailed as failure:
        if failure.fatal:
          raise
        return Order(FAILED, attempts=attempts, detail=f'{failure.kind}: {failure.detail}')
      attempts += 1
      try:
        verdict = parse_verdict(reply['content'])
      except Malformed as e:
        if attempts > self.fix_attempts:
          return Order(INVALID, attempts=attempts, reply=reply['content'], detail=str(e))
        chat = fix_messages(chat, reply['content'], str(e))
        continue
      probabilities = verdict_probabilities(reply.get('logprobs'))
      return Order(JUDGED, verdict, preference_for_first(verdict, probabilities),
                   FROM_VERDICT if probabilities is None else FROM_LOGPROBS,
                   probabilities, attempts, reply['content'])

  def judge(self, prompt: str, answer: str, baseline: str) -> Judgement:
    """Both orders of one pair, one after the other (`judge_many` runs them at once)."""
    return combine(self.order(prompt, answer, baseline), self.order(prompt, baseline, answer))


def judge_many(judge: Judge, pairs: Sequence[tuple[str, str, str]], *, concurrency: int = 8,
               progress: bool = True, desc: str = 'judging') -> list[Judgement]:
  """The judgements of (prompt, answer, baseline) pairs, in order; `concurrency`
  requests in flight at once, a tqdm bar of the verdicts on stderr.

  Raises:
    RequestFailed: a fatal one (401, 403, 404): the service is stopped, so that
      no request queued behind it is sent.
  """
  import tqdm  # pylint: disable=g-import-not-at-top
  bar = tqdm.tqdm(total=2 * len(pairs), unit='verdict', file=sys.stderr, dynamic_ncols=True,
                  disable=None if progress else True, desc=desc)

  def order(prompt, first, second):
    try:
      return judge.order(prompt, first, second)
    except service_lib.RequestFailed:
      judge.service.stop()  # at once, in this worker (see annotation.runner.run)
      raise
    finally:
      bar.update(1)

  pool = concurrent.futures.ThreadPoolExecutor(max_workers=concurrency)
  try:
    futures = [(pool.submit(order, p, a, b), pool.submit(order, p, b, a))
               for p, a, b in pairs]
    return [combine(f.result(), g.result()) for f, g in futures]
  except BaseException:
    judge.service.stop()
    raise
  finally:
    pool.shutdown(wait=True, cancel_futures=True)
    bar.close()


@contextlib.contextmanager
def opened(settings: chat_flags.Settings, cache_path: str, *,
           top_logprobs: int = DEFAULT_TOP_LOGPROBS, fix_attempts: int = 1) -> Iterator[Judge]:
  """A judge on `settings`' service whose replies are cached in `cache_path`
  (closed on exit); `top_logprobs=0` asks for no log-probabilities."""
  settings.check('the judge')
  cache = cache_lib.Cache(cache_path)
  service = settings.service(cache=cache, counters=service_lib.Counters(),
                             prompt_version=PROMPT_VERSION, top_logprobs=top_logprobs)
  try:
    yield Judge(service, fix_attempts=fix_attempts)
  finally:
    service.close()
    cache.close()


def judge_all(judge: Judge, pairs: Sequence[tuple[str, str, str]], *, concurrency: int = 8,
              progress: bool = True, desc: str = 'judging') -> list[Judgement]:
  """`judge_many`, with a fatal status turned into a `ServiceError` (exit status 7)
  that says where the replies received so far are kept."""
  try:
    return judge_many(judge, pairs, concurrency=concurrency, progress=progress, desc=desc)
  except service_lib.RequestFailed as failure:
    cache = judge.service.cache
    kept = (f'; the {len(cache)} replies received are kept in {cache.path}'
            if cache is not None else '')
    raise errors.ServiceError(f'the judge refused a request with status {failure.kind}: '
                              f'{failure.detail}{kept}') from None


def check_failed(judgements: Sequence[Judgement], what: str) -> None:
  """A ServiceError when some pairs' requests failed after their retries: running
  the same command again asks for those only (the others come from the cache)."""
  failed = [j for j in judgements if j.outcome == FAILED]
  if failed:
    raise errors.ServiceError(
        f'{len(failed)} of {len(judgements)} pairs got no verdict: their requests failed '
        f'after the retries (the first: {failed[0].detail}); {what}. Run the same '
        'command again to ask for these only (the replies received come from the cache)')


def summarize(judgements: Sequence[Judgement], groups: Iterable[str] | None = None
              ) -> dict[str, dict[str, float]]:
  """Per group (e.g. family; in the order first met) and overall ('all'):

  pairs, judged, invalid, failed (counts); win_rate: 100 x the mean win of the
  judged pairs (NaN when none); agreement: the share of judged pairs whose two
  orders named the same winner; from_logprobs: the share of judged orders
  weighed by log-probabilities.
  """
  names = list(groups) if groups is not None else ['all'] * len(judgements)
  if len(names) != len(judgements):
    raise ValueError(f'{len(names)} groups for {len(judgements)} judgements')
  by_group: dict[str, list[Judgement]] = collections.defaultdict(list)
  for name, j in zip(names, judgements):
    if name != 'all':
      by_group[name].append(j)
  by_group['all'] = list(judgements)
  out = {}
  for name, group in by_group.items():
    judged = [j for j in group if j.outcome == JUDGED]
    orders = [o for j in judged for o in j.orders]
    out[name] = {
        'pairs': len(group), **{k: sum(j.outcome == k for j in group) for k in OUTCOMES},
        'win_rate': 100 * sum(j.win for j in judged) / len(judged) if judged else math.nan,
        'agreement': sum(j.agree for j in judged) / len(judged) if judged else math.nan,
        'from_logprobs': (sum(o.confidence == FROM_LOGPROBS for o in orders) / len(orders)
                          if orders else math.nan)}
  return out


def table(summary: Mapping[str, Mapping[str, float]], group: str = 'group') -> str:
  """A Markdown table of `summarize`'s output."""
  lines = [f'| {group} | pairs | judged | invalid | failed | win rate | orders agree '
           '| from logprobs |', '|' + '---|' * 8]
  for name, s in summary.items():
    agreement = 'n/a' if math.isnan(s['agreement']) else f'{100 * s["agreement"]:.0f}%'
    logprobs = 'n/a' if math.isnan(s['from_logprobs']) else f'{100 * s["from_logprobs"]:.0f}%'
    rate = 'n/a' if math.isnan(s['win_rate']) else f'{s["win_rate"]:.1f}'
    lines.append(f'| {name} | {s["pairs"]} | {s[JUDGED]} | {s[INVALID]} | {s[FAILED]} '
                 f'| {rate} | {agreement} | {logprobs} |')
  return '\n'.join(lines)
