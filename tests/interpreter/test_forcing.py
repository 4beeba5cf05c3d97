"""Forcing rows of whole answers (`interpreter.forcing`); the replay tests decode them."""

import numpy as np
import pytest

from pasta_jax.interpreter import forcing
from pasta_jax.interpreter.state import NOT_FORCED


def test_thread_forcing_pads_each_thread_and_rejects_what_does_not_fit():
  threads = [np.array([4, 5, 6]), np.array([7])]
  rows = forcing.thread_forcing(threads, 3, width=4)
  n = NOT_FORCED
  assert rows.tolist() == [[4, 5, 6, n], [7, n, n, n], [n, n, n, n]]
  assert forcing.thread_forcing(threads, 2).shape == (2, 3)  # the longest thread
  with pytest.raises(ValueError, match='2 promises; .* at most 1'):
    forcing.thread_forcing(threads + [np.array([8])], 2)
  with pytest.raises(ValueError, match='samples 3 tokens, more than the forcing width 2'):
    forcing.thread_forcing(threads, 3, width=2)


def test_thread_tokens_split_an_annotation_by_thread(tok):
  c = tok.control
  text = tok.encode_text
  response = np.array([*text('x'), c.promise, *text('a'), c.length_id(10), c.async_open,
                       *text('hi'), c.async_close, c.sync, *text('y'), c.eos], np.int32)
  main, body = forcing.thread_tokens(response, c)
  assert main.tolist() == [*text('x'), c.promise, *text('a'), c.length_id(10), c.sync,
                           *text('y'), c.eos]
  assert body.tolist() == [*text('hi'), c.async_close]  # <async> is fed, not sampled
  (whole,) = forcing.thread_tokens(response, c, sequential=True)
  assert whole.tolist() == response.tolist()
