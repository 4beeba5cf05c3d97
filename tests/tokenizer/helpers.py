"""Shared helpers of the tokenizer tests: a corpus, Gemma-style models, strategies."""

import random

from hypothesis import assume, strategies as st

from pasta_jax import lang
from pasta_jax import standins

P, S, D = lang.Promise, lang.Sync, lang.Document


def corpus(n=3000, seed=0):
  rng = random.Random(seed)
  words = ('the a of to and in is it you that for on with as are this be at or by '
           'list step first second answer because number value result python code '
           'return print def class import x y z total sum 1 2 3 10 42 2025').split()
  extras = ['<div class="note">', '</div>', '<p>', '</p>', 'a < b', 'if (x > 0) {',
            '}', '    return x\n', 'def f(x):\n', '😀', 'naïve café', '日本語', '\t',
            '<promise topic="steps" tokens="30"/>', '<async>', '</async>', '<sync/>']
  lines = []
  for _ in range(n):
    parts = [rng.choice(words) for _ in range(rng.randint(1, 12))]
    if rng.random() < 0.4:
      parts.insert(rng.randrange(len(parts) + 1), rng.choice(extras))
    lines.append(' '.join(parts) + ('\n' if rng.random() < 0.2 else ''))
  return lines


def train_gemma_style(path, *, add_dummy_prefix=False, normalization='identity',
                      byte_fallback=True):
  """A small sentencepiece model with Gemma's conventions (reserved USER_DEFINED pieces)."""
  return standins.gemma_style_tokenizer(
      path, corpus(1500, seed=1), add_dummy_prefix=add_dummy_prefix,
      normalization=normalization, byte_fallback=byte_fallback)


# Strategies: text full of tag lookalikes, and well-formed documents.

LOOKALIKES = [
    '<', '>', '/>', '</', '<promises>', '< sync/>', '<syncing/>', '<Sync/>', '<asyncio>',
    '</promise_x>', '<sync', '<async', '</async', '<promise', 'a < b > c', 'x<<y',
    '<div class="x">', '</div>', '<!-- c -->', 'if (a<b && c>d) {}',
    'def f(x):\n    return x < 1\n', '&quot;', '&amp;', '&', '"', "'",
    '<unused0>', '<unused1>', '<unused4>', '<unused10>', '<unused0', 'unused0>',
    '<unused<unused0>>', '<unused2><unused3>', '<start_of_turn>', '<end_of_turn>',
    '<pasta:promise>', '<pasta:async>', '</pasta:async>', '<pasta:sync/>',
    '<pasta:len=0>', '<pasta:len=20>', '<pasta:len=<pasta:len=10>>',
    '<pad>', '<eos>', '<bos>', '<unk>', '<s>', '</s>', '<0x41>',
    '\u2581', '\u2581\u2581', ' \u2581', '\u2581x', '😀', '👩\u200d💻', 'é', 'e\u0301', '日本',
    '\n', '\r\n', '\t', ' ', '   ', '\u3000', '\x00', '\ufeff', '1234567890', '3.14',
]

_chars = st.characters(exclude_categories=['Cs'])
raw_text = st.lists(st.one_of(st.sampled_from(LOOKALIKES), st.text(_chars, max_size=10)),
                    max_size=8).map(''.join)
any_text = st.one_of(raw_text, st.text(_chars, max_size=40))


def _is_plain(text):
  try:
    lang.Text(text)
  except lang.PastaLangError:
    return False
  return True


plain_text = raw_text.filter(_is_plain)


@st.composite
def documents(draw, max_tokens=200, quantum=10, annotated=True):
  length = st.integers(0, max_tokens // quantum).map(lambda n: n * quantum)
  body = plain_text if annotated else st.none()
  promise = st.builds(P, topic=any_text, tokens=length, body=body)
  nodes = draw(st.lists(st.one_of(plain_text.map(lang.Text), promise, st.just(S())),
                        max_size=7))
  try:  # merging adjacent texts can form a tag ('<sync' + '/>')
    return D(tuple(nodes))
  except lang.PastaLangError:
    assume(False)


def no_control(tok, ids):
  return not set(ids) & set(tok.control.tag_ids)
