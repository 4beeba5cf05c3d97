"""The few-shot examples shipped with the package, and the chat built from them."""

import configparser
import pathlib
import re

import pytest

from pasta_jax import lang
from pasta_jax.annotation import prompt
from pasta_jax.annotation import validation

EXAMPLES = prompt.load_examples()
REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.parametrize('example', EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_example_parses_and_strips_back_to_its_response(example):
  doc = lang.parse(example.annotated)  # annotated, promised lengths multiples of 10
  assert lang.strip(doc) == example.response
  assert validation.check(example.annotated, example.response) == doc
  for promise in doc.promises:
    assert promise.body.strip() and promise.topic.strip()
    estimate = validation.estimate_tokens(promise.body)
    assert estimate <= promise.tokens < estimate + 10, promise.topic
  # A sync only where it makes something wait: after a promise, before more text.
  kinds = [type(n).__name__ for n in doc.nodes]
  for i, kind in enumerate(kinds):
    if kind == 'Sync':
      assert 'Promise' in kinds[:i] and 'Text' in kinds[i + 1:], example.name


def test_examples_cover_what_the_issue_asks_for():
  docs = {e.name: lang.parse(e.annotated) for e in EXAMPLES}
  assert len(docs) >= 7
  bodies = {name: ''.join(p.body for p in doc.promises) for name, doc in docs.items()}
  texts = {e.name: e.response for e in EXAMPLES}
  assert any(re.search(r'^\s*- ', b, re.M) for b in bodies.values())          # a bulleted list
  assert any('<' in b and '</' in b for b in bodies.values())               # code and HTML
  untagged = [name for name, doc in docs.items() if not doc.promises]
  assert len(untagged) >= 3  # sequential prose, a short answer, dependent steps
  assert any(len(texts[n]) < 100 for n in untagged)                         # a short answer
  assert any(re.search(r'^1\. ', texts[n], re.M) for n in untagged)         # ordered steps kept
  assert any(isinstance(doc.nodes[-2], lang.Sync) for doc in docs.values())  # sync, conclusion
  nested = [b for b in bodies.values() if re.search(r'^\d\. .*\n +- ', b, re.M)]
  assert nested  # nested ordered steps inside a body
  tables = [doc for doc in docs.values() if isinstance(doc.nodes[0], lang.Text)
            and doc.nodes[0].text.startswith('|') and doc.promises]
  assert tables  # a table in the main text, a list in promises
  topics = [p.topic for doc in docs.values() for p in doc.promises]
  assert any('"' in t for t in topics) and any('&' in t for t in topics)
  assert len({e.name for e in EXAMPLES}) == len(EXAMPLES)


def test_chat_layout():
  chat = prompt.messages('Q?', 'A.', EXAMPLES)
  assert [m['role'] for m in chat] == (['system'] + ['user', 'assistant'] * len(EXAMPLES)
                                       + ['user'])
  assert chat[-1]['content'].endswith('adding only PASTA-LANG tags):\nA.')
  assert chat[-1]['content'].startswith('Prompt:\nQ?\n\n')
  for i, example in enumerate(EXAMPLES):
    assert chat[2 + 2 * i]['content'] == example.annotated
    assert f'{i + 1}. {example.name}: {example.teaches}' in chat[0]['content']
  fix = prompt.fix_messages(chat, 'bad', validation.Invalid('parse-error', 'it broke'))
  assert fix[:-2] == chat and fix[-2] == {'role': 'assistant', 'content': 'bad'}
  assert fix[-1]['content'].startswith('Your annotation is not valid: it broke.\n')


def test_examples_file_is_package_data():
  config = configparser.ConfigParser()
  config.read(REPO / 'setup.cfg')
  assert prompt.EXAMPLES_FILE in config['options.package_data']['pasta_jax.annotation']
  assert 'openai' in config['options']['install_requires']


def test_parse_examples_refuses_unknown_fields():
  with pytest.raises(ValueError, match=r"example 0 has fields \['name', 'prompt'\]"):
    prompt.parse_examples({'example': [{'name': 'x', 'prompt': 'p'}]})
