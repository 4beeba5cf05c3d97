"""Helpers of the benchmark scripts (scripts/bench_*.py import them from this folder)."""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping

from pasta_jax import tokenizer as tokenizer_lib
from pasta_jax.data import synthetic


def interleaved(fns: Mapping[Any, Callable[[], Any]], runs: int) -> dict[Any, float]:
  """Minimum time (s) of each function over `runs` rounds that run them in turn,
  after one call of each (compile and warm up).

  Interleaving and the minimum make the ratios robust to a noisy shared host.
  """
  for fn in fns.values():
    fn()
  best = {name: float('inf') for name in fns}
  for _ in range(runs):
    for name, fn in fns.items():
      start = time.perf_counter()
      fn()
      best[name] = min(best[name], time.perf_counter() - start)
  return best


def synthetic_tokenizer() -> tokenizer_lib.Tokenizer:
  """A 512-piece tokenizer trained on 1000 synthetic training examples."""
  texts = []
  for example in synthetic.generate('train', 1000):
    texts += [example.prompt, example.plain]
  return tokenizer_lib.train_tokenizer(texts, None, vocab_size=512, max_promise_tokens=100)


def ban(*tokens: int) -> dict[int, float]:
  """A logit bias that keeps `tokens` from being sampled."""
  return {t: -1e9 for t in tokens}
