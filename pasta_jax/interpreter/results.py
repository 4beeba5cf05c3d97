"""What a generation returns on the host: `Result` per request (with its
`ThreadSpan`s), `Timing`, and their assembly from a finished `State`."""

from __future__ import annotations

import dataclasses

import numpy as np

from pasta_jax import lang
from pasta_jax import thread_view
from pasta_jax import tokenizer as tokenizer_lib
from pasta_jax.interpreter import grammar
from pasta_jax.interpreter.state import BUDGET, RUNNING, STATUS_NAMES, State

# A request the interpreter did not decode: its prompt is longer than the
# largest prompt bucket (`Interpreter.max_prompt_tokens`).
PROMPT_TOO_LONG = 'prompt_too_long'


class PromptTooLongError(ValueError):
  """A prompt longer than the interpreter takes; the message says what would fit."""


@dataclasses.dataclass(frozen=True)
class Timing:
  """Seconds one request spent in the prefill and in the decode rounds."""

  prefill_seconds: float
  decode_seconds: float

  @property
  def seconds(self) -> float:
    return self.prefill_seconds + self.decode_seconds


@dataclasses.dataclass(frozen=True)
class ThreadSpan:
  """What one thread wrote: its tokens and the rounds it sampled them in."""

  thread: int
  tokens: tuple[int, ...]
  first_round: int
  last_round: int


@dataclasses.dataclass(frozen=True)
class Result:
  """One request's generation.

  Attributes:
    prompt: the prompt text (None when generating from ids).
    status: 'done', 'budget' (max_steps reached), 'cache_full', or
      'prompt_too_long' (not decoded: `detail` gives the prompt's length, the
      limit and the setting that raises it; everything else is empty).
    ids: the response in token form, training layout (each body right after its
      promise; reusable with `layout.pasta_layout`), EOS included when written.
    document: the annotated `lang.Document` (None if a stop cut an element).
    text: the final answer (`lang.strip(document)`), or the best text available.
    threads: one ThreadSpan per thread (0 = main).
    steps: decode rounds, the prefill round included (docs/design.md section 6).
    total_tokens: tokens sampled by all threads.
    timeline: (round, thread, token) of every sampled token, in sampling order.
    logits: [total_tokens, V] logits each token was sampled from, in timeline
      order (InterpreterConfig.record_logits only).
    prompt_tokens: the prompt's length in tokens (0 when not known: `results`
      of a bare `State`).
    detail: why a request was not decoded ('' when it was).
  """

  prompt: str | None
  status: str
  ids: tuple[int, ...]
  document: lang.Document | None
  text: str
  threads: tuple[ThreadSpan, ...]
  steps: int
  total_tokens: int
  timeline: tuple[tuple[int, int, int], ...] = ()
  logits: np.ndarray | None = None
  prompt_tokens: int = 0
  detail: str = ''

  @property
  def annotated(self) -> str | None:
    return None if self.document is None else lang.serialize(self.document)

  @property
  def parallelism(self) -> float:
    return self.total_tokens / max(self.steps, 1)

  @property
  def tokens_per_thread(self) -> tuple[int, ...]:
    return tuple(len(t.tokens) for t in self.threads)

  def _repr_html_(self) -> str:
    """Jupyter's view: the answer with one colour per thread and the thread timeline
    (`thread_view.result_html`; give it the tokenizer for each bar's text)."""
    return thread_view.result_html(self)


def prompt_too_long(prompt_tokens: int, detail: str) -> Result:
  """The result of a request that was not decoded because its prompt is too long."""
  return Result(prompt=None, status=PROMPT_TOO_LONG, ids=(), document=None, text='',
                threads=(), steps=0, total_tokens=0, prompt_tokens=prompt_tokens,
                detail=detail)


def from_state(state: State, tok: tokenizer_lib.Tokenizer, tables: grammar.TokenTables, *,
               sequential: bool, record_logits: bool) -> list[Result]:
  """The results of a finished (or stopped) batch, one per request of `state`."""
  out_token = np.asarray(state.out_token)
  out_thread = np.asarray(state.out_thread)
  out_round = np.asarray(state.out_round)
  out_len = np.asarray(state.out_len)
  status = np.asarray(state.status)
  steps = np.asarray(state.steps)
  logits = np.asarray(state.out_logits) if record_logits else None
  results = []
  for b in range(len(out_len)):
    n = int(out_len[b])
    code = int(status[b])
    if code == RUNNING:
      code = BUDGET
    results.append(_result(tok, tables, sequential, out_token[b, :n], out_thread[b, :n],
                           out_round[b, :n], STATUS_NAMES[code], int(steps[b]),
                           None if logits is None else logits[b, :n]))
  return results


def _result(tok: tokenizer_lib.Tokenizer, tables: grammar.TokenTables, sequential: bool,
            tokens: np.ndarray, threads: np.ndarray, rounds: np.ndarray, status: str,
            steps: int, logits: np.ndarray | None) -> Result:
  c = tok.control
  spans = []
  for k in range(int(threads.max(initial=0)) + 1):
    where = np.flatnonzero(threads == k)
    spans.append(ThreadSpan(k, tuple(int(t) for t in tokens[where]),
                            int(rounds[where[0]]) if len(where) else 0,
                            int(rounds[where[-1]]) if len(where) else 0))
  # Training layout: each thread's <async> + body + </async> after its length token.
  ids, promise = [], 0
  for token in spans[0].tokens:
    ids.append(token)
    if not sequential and tables.length[token] >= 0:
      promise += 1
      if promise < len(spans):
        ids += [c.async_open, *spans[promise].tokens]
  document, text = None, ''
  try:
    document = tok.decode(ids)
    text = lang.strip(document)
  except lang.PastaLangError:
    # A stop cut an element (only with status budget / cache_full): keep the
    # main thread's plain text as the best available answer.
    main_text = [t for t in spans[0].tokens if tables.is_text[t]]
    text = tok.decode_text(main_text)
  return Result(prompt=None, status=status, ids=tuple(ids), document=document,
                text=text, threads=tuple(spans), steps=steps,
                total_tokens=int(len(tokens)),
                timeline=tuple(zip(rounds.tolist(), threads.tolist(), tokens.tolist())),
                logits=logits)
