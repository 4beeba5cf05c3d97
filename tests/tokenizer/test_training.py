"""train_tokenizer: deterministic, lossless, and its argument errors."""

import pytest

from pasta_jax import tokenizer as tk
from tests.tokenizer.helpers import corpus


# ----------------------------------------------------------------------------
# Training.


def test_training_is_deterministic_and_fast(pasta_path):
  a = tk.train_tokenizer(corpus(500, seed=3), None, vocab_size=400, max_promise_tokens=100)
  b = tk.train_tokenizer(corpus(500, seed=3), None, vocab_size=400, max_promise_tokens=100)
  assert a == b and a.model_proto == b.model_proto
  assert a.vocab_size <= 400 and a.lossless
  unigram = tk.train_tokenizer(corpus(500), None, vocab_size=400, model_type='unigram')
  assert unigram.decode_text(unigram.encode_text('def f(x):\n  return 42')) == (
      'def f(x):\n  return 42')


def test_training_errors():
  with pytest.raises(ValueError, match='vocab_size=256 is too small'):
    tk.train_tokenizer(corpus(10), None, vocab_size=256)
  with pytest.raises(ValueError, match='no non-empty texts'):
    tk.train_tokenizer(['', ''], None, vocab_size=512)
  with pytest.raises(ValueError, match='multiple of the quantum'):
    tk.train_tokenizer(corpus(10), None, max_promise_tokens=25)
  with pytest.raises(ValueError, match='sets'):
    tk.train_tokenizer(corpus(10), None, control_symbols=['x'])
