"""Teacher forcing of whole answers (host side): the `Requests.forced` rows that
make the interpreter decode a given tokenized answer, for replay tests and the
forced-decoding benchmarks (`record.force` reads them on the device).

    forced = thread_forcing(thread_tokens(response, tok.control),
                            interp.engine.num_thread_ids, width)
    interp.generate_ids([prompt], forced=forced[None])   # writes `response` exactly

Every token a thread samples is forced, its last one included (EOS for the main
thread, `</async>` for the others), so the answer ends where the reference ends
whatever the weights would have sampled.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from pasta_jax import tokens as tokens_lib
from pasta_jax.interpreter.state import NOT_FORCED


def thread_tokens(response: Sequence[int] | np.ndarray, control: tokens_lib.ControlTokens, *,
                  sequential: bool = False) -> list[np.ndarray]:
  """The tokens each thread samples when the interpreter writes `response`.

  `response` is a tokenized answer ending in EOS: in PASTA mode an annotated one
  in the training layout (each body right after its promise; `tokens.scan`
  parses it), whose thread 0 samples its text, tags, syncs and EOS and thread k
  the k-th body and `</async>` (its `<async>` is fed by the interpreter, not
  sampled); in sequential mode (`sequential`) a plain one, all of it thread 0's.
  """
  response = np.asarray(response, np.int32).reshape(-1)
  if sequential:
    return [response]
  scan = tokens_lib.scan(response, control)
  return [response[scan.thread == 0]] + [response[scan.thread == k][1:]
                                         for k in range(1, scan.num_threads + 1)]


def thread_forcing(threads: Sequence[np.ndarray], num_thread_ids: int,
                   width: int | None = None) -> np.ndarray:
  """int32 [num_thread_ids, width]: row k forces `threads[k]`, NOT_FORCED after it
  and in the rows of threads not given (one request's `Requests.forced`).

  `width` (default: the longest thread) is fixed across a batch's requests, and
  across batches where one compilation should serve them all.

  Raises:
    ValueError: more threads than `num_thread_ids`, or a thread longer than `width`.
  """
  if len(threads) > num_thread_ids:
    raise ValueError(f'{len(threads) - 1} promises; the interpreter takes at most '
                     f'{num_thread_ids - 1} (InterpreterConfig.max_threads)')
  longest = max((len(t) for t in threads), default=0)
  width = longest if width is None else width
  if longest > width:
    raise ValueError(f'a thread samples {longest} tokens, more than the forcing width '
                     f'{width}')
  forced = np.full((num_thread_ids, max(width, 1)), NOT_FORCED, np.int32)
  for k, thread in enumerate(threads):
    forced[k, :len(thread)] = thread
  return forced
