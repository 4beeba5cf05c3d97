"""From text examples to token ids: prompt formatting and promised-length measuring."""

from __future__ import annotations

import dataclasses

import numpy as np

from pasta_jax import lang
from pasta_jax import tokenizer as tokenizer_lib

PROMISE_LENGTHS = ('measured', 'annotated')


@dataclasses.dataclass(frozen=True)
class Encoded:
  """One example in token form.

  Attributes:
    prompt: formatted prompt ids (BOS first when the tokenizer has one).
    response: the annotated response in token form, ending in EOS.
    plain: the stripped response (the sequential baseline's target), ending in EOS.
    document: the annotated document that `response` encodes (after measuring).
  """

  prompt: np.ndarray
  response: np.ndarray
  plain: np.ndarray
  document: lang.Document


def measure_promises(doc: lang.Document, tok: tokenizer_lib.Tokenizer) -> lang.Document:
  """Sets each promise's length to its body's token count, rounded up to the quantum.

  Lengths above the tokenizer's largest length token are capped there (the body
  then overruns its reserved positions, which docs/design.md section 3 allows).
  """
  nodes = []
  for node in doc.nodes:
    if isinstance(node, lang.Promise) and node.body is not None:
      count = len(tok.encode_text(node.body))
      node = dataclasses.replace(node, tokens=count)
    nodes.append(node)
  return lang.Document(tuple(nodes)).quantized(tok.quantum, tok.max_promise_tokens)


def encode_prompt(prompt: str, tok: tokenizer_lib.Tokenizer, template: str) -> np.ndarray:
  """BOS + the prompt rendered through `template` (which holds one `{prompt}`)."""
  if template.count('{prompt}') != 1:
    raise ValueError(f'prompt template must contain {{prompt}} exactly once: {template!r}')
  ids = tok.encode_text(template.replace('{prompt}', prompt))
  if tok.bos_id is not None:
    ids = [tok.bos_id] + ids
  return np.asarray(ids, np.int32)


def encode_example(prompt: str, annotated: str, tok: tokenizer_lib.Tokenizer, *,
                   template: str = '{prompt}\n', promise_lengths: str = 'measured') -> Encoded:
  """Encodes one (prompt, annotated response) pair; raises PastaLangError if malformed."""
  if promise_lengths not in PROMISE_LENGTHS:
    raise ValueError(f'promise_lengths must be one of {PROMISE_LENGTHS}, '
                     f'got {promise_lengths!r}')
  doc = lang.parse(annotated, quantum=1 if promise_lengths == 'measured' else tok.quantum)
  if promise_lengths == 'measured':
    doc = measure_promises(doc, tok)
  response = tok.encode(doc, add_eos=True)
  plain = np.asarray(tok.encode_text(lang.strip(doc)) + [tok.eos_id], np.int32)
  return Encoded(encode_prompt(prompt, tok, template), response, plain, doc)
