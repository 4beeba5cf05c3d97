"""Hypothesis strategies for PASTA-LANG documents, shared by the test modules."""

import re

from hypothesis import strategies as st

from pasta_jax import lang

_TAG_START = re.compile(r'</?(?:promise|async|sync)[\s/>]')

# Fragments that look like tags but are text, plus code and markup.
LOOKALIKES = [
    '<promises>', '< sync/>', '<syncing/>', '<asynchronous>', '</promise_x>', '<p>',
    '<b>bold</b>', 'a < b > c', 'x<<y', '<!-- c -->', 'if (a<b && c>d) {}',
    '<promise', '&quot;', '&amp;', '"quoted"', "it's", '\n', '\t', '  ', '🍝', 'é',
    '<unused0>', '<pasta:sync/>',
]

plain_text = st.lists(
    st.one_of(st.text(max_size=12), st.sampled_from(LOOKALIKES)), max_size=5,
).map(''.join).filter(lambda s: not _TAG_START.search(s))

topics = st.text(max_size=15).filter(lambda s: not _TAG_START.search(s))


def nodes(quantum: int = 10, max_length: int = 200, annotated: bool = True):
  length = st.integers(0, max_length // quantum).map(lambda n: n * quantum)
  body = plain_text if annotated else st.none()
  promise = st.builds(lang.Promise, topic=topics, tokens=length, body=body)
  return st.one_of(plain_text.map(lang.Text), promise, st.just(lang.Sync()))


def _document_or_none(ns):
  # Adjacent texts merge, and '<promise' + ' x' would spell a tag: skip those.
  try:
    return lang.Document(tuple(ns))
  except lang.PastaLangError:
    return None


def documents(quantum: int = 10, max_length: int = 200, annotated: bool = True,
              max_nodes: int = 8):
  return st.lists(nodes(quantum, max_length, annotated), max_size=max_nodes).map(
      _document_or_none).filter(lambda d: d is not None)
