"""Session fixtures of the tokenizer tests: three tokenizers, trained once.

  * `pasta`: our own model (train_tokenizer), control tokens as control symbols.
  * `gemma`: a sentencepiece model trained like Gemma's (reserved `<unused0>`..
    `<unused59>` as USER_DEFINED pieces, byte fallback, identity normalization),
    wrapped with the default reserved-piece mapping.
  * `gemma_dummy_prefix`: the same, trained with add_dummy_prefix=True.
The property tests run against all three (`any_tok`).
"""

import pytest

from pasta_jax import tokenizer as tk
from tests.tokenizer import helpers


@pytest.fixture(scope='session')
def models_dir(tmp_path_factory):
  return tmp_path_factory.mktemp('tokenizers')


@pytest.fixture(scope='session')
def pasta_path(models_dir):
  path = models_dir / 'pasta.model'
  tk.train_tokenizer(helpers.corpus(), path, vocab_size=768, max_promise_tokens=200)
  return str(path)


@pytest.fixture(scope='session')
def pasta_tok(pasta_path):
  return tk.Tokenizer.load(pasta_path)


@pytest.fixture(scope='session')
def gemma_path(models_dir):
  return helpers.train_gemma_style(models_dir / 'gemma_style.model')


@pytest.fixture(scope='session')
def gemma_tok(gemma_path):
  return tk.Tokenizer.from_pretrained(gemma_path)


@pytest.fixture(scope='session')
def dummy_prefix_path(models_dir):
  return helpers.train_gemma_style(models_dir / 'dummy_prefix.model', add_dummy_prefix=True)


@pytest.fixture(scope='session', params=['pasta', 'gemma', 'gemma_dummy_prefix'])
def any_tok(request, pasta_path, gemma_path, dummy_prefix_path):
  if request.param == 'pasta':
    return tk.Tokenizer.load(pasta_path)
  path = gemma_path if request.param == 'gemma' else dummy_prefix_path
  return tk.Tokenizer.from_pretrained(path)
