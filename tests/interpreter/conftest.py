"""Shared fixtures: a small trained tokenizer, a tiny random model, test documents."""

import jax
import numpy as np
import pytest

from pasta_jax import models
from pasta_jax.data import synthetic
from pasta_jax.interpreter import forcing

from tests import fixtures


_fast_compiles = pytest.fixture(scope='package', autouse=True)(fixtures.fast_compiles)


@pytest.fixture(scope='session')
def tok():
  return fixtures.synthetic_tokenizer(300)


@pytest.fixture(scope='session')
def model(tok):
  config = models.get_config('tiny', vocab_size=tok.vocab_size)
  return config, models.init_params(config, jax.random.key(0))


DOCUMENTS = [
    # Three promises: more than one or two async slots.
    'x <promise topic="a" tokens="10"/><async>hello there</async> mid '
    '<promise topic="b" tokens="20"/><async>more body</async>'
    '<promise topic="c" tokens="0"/><async>c!</async><sync/> end',
    # Text after the last sync and a thread forked after a sync.
    '<promise topic="a" tokens="30"/><async>a) owl spelled: o-w-l</async><sync/>'
    'then <promise topic="b" tokens="10"/><async>b) 12</async> tail',
    # No promises at all.
    'answer: 3 4 5.',
    # An empty body, back-to-back promises, EOS as the implicit sync.
    '<promise topic="" tokens="0"/><async></async><promise topic="q" tokens="10"/>'
    '<async>q q q q q q</async><promise topic="r" tokens="10"/><async>r</async>',
]


def forced_threads(response, control, num_thread_ids, width=192):
  """[P, width] forced tokens per thread: main tokens, then each body + </async>."""
  return forcing.thread_forcing(forcing.thread_tokens(response, control), num_thread_ids,
                                width)


def synthetic_documents(count):
  return [e.annotated for e in synthetic.generate('test', count)]


def prompt_ids(tok, text):
  return np.asarray([tok.bos_id] + tok.encode_text(text + '\n'), np.int32)
