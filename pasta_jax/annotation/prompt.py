"""The llm annotator's prompt: instructions, few-shot examples, the fix-up message.

The chat is: a system message (the rules of PASTA-LANG annotation and what each
example shows), then each example of `examples.toml` as a user turn (its prompt and
response, `user_message`) and an assistant turn (its annotation), then the response
to annotate as a last user turn. An invalid reply gets one more user turn,
`fix_message`, with the validation error (docs/annotation.md, "The prompt").

`PROMPT_VERSION` is part of every request's cache key; raise it when the words or
the layout of the chat change in a way the examples file does not show (the
examples' text is in the key anyway, through the messages).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import tomllib
from typing import Any

from pasta_jax.annotation import validation

PROMPT_VERSION = 1
EXAMPLES_FILE = 'examples.toml'

_SYSTEM = """\
You annotate answers with PASTA-LANG, a markup that lets a language model write the \
independent parts of its answer in parallel. You receive a prompt and the answer to it, \
and you return the same answer with tags added.

The tags:
- <promise topic="TOPIC" tokens="N"/><async>CHUNK</async> marks CHUNK, a contiguous part \
of the answer that can be written without seeing the other chunks or the text that \
follows the promise. TOPIC says in a few words what the chunk covers (write " as &quot; \
and & as &amp;). N predicts the chunk's length in tokens (about one token per 4 \
characters), rounded up to a multiple of 10.
- <sync/> waits for every chunk promised so far. Put it before text that depends on \
what the chunks say, such as a conclusion or a summary that refers to them. The end of \
the answer waits for all chunks, so no <sync/> is needed there.

The rules:
1. Copy the answer exactly, character for character: the same words, punctuation, \
whitespace, line breaks, Markdown and code. Only add tags.
2. Chunks hold text only: no tags inside an <async> body, no nested promises. A promise \
is always followed immediately by its <async> body.
3. Mark only parts that are really independent: list items, sections or paragraphs that \
each stand on their own. Keep in the main text what later parts build on: \
introductions, steps that use the result of an earlier step, a table, a single line of \
reasoning.
4. A short answer, or one in which every part depends on the one before, is returned \
unchanged, with no tags.
5. Code, HTML and XML in the answer are ordinary text (`<`, `<div>`, `<script>`); only \
promise, async and sync are tags.
6. Reply with the annotated answer only: no explanation before or after it, no code \
fence around it.

What the examples show:
{teaches}"""

_USER = """\
Prompt:
{prompt}

Answer to annotate (copy it exactly, adding only PASTA-LANG tags):
{response}"""

_FIX = """\
Your annotation is not valid: {error}.
Reply with the whole answer again, annotated, copied exactly apart from the tags."""


@dataclasses.dataclass(frozen=True)
class Example:
  """A hand-written annotation: `annotated` strips back to `response`."""

  name: str
  teaches: str
  prompt: str
  response: str
  annotated: str


@functools.cache
def load_examples() -> tuple[Example, ...]:
  """The few-shot examples shipped with the package (`examples.toml`)."""
  text = importlib.resources.files(__package__).joinpath(EXAMPLES_FILE).read_text('utf-8')
  return parse_examples(tomllib.loads(text))


def parse_examples(data: dict[str, Any]) -> tuple[Example, ...]:
  """The examples of a loaded examples file (its `[[example]]` tables)."""
  fields = [f.name for f in dataclasses.fields(Example)]
  examples = []
  for i, table in enumerate(data.get('example', [])):
    if sorted(table) != sorted(fields):
      raise ValueError(f'{EXAMPLES_FILE}: example {i} has fields {sorted(table)}, '
                       f'expected {sorted(fields)}')
    examples.append(Example(**table))
  return tuple(examples)


def system_message(examples: tuple[Example, ...]) -> str:
  teaches = '\n'.join(f'{i}. {e.name}: {e.teaches}' for i, e in enumerate(examples, 1))
  return _SYSTEM.format(teaches=teaches)


def user_message(prompt: str, response: str) -> str:
  return _USER.format(prompt=prompt, response=response)


def messages(prompt: str, response: str, examples: tuple[Example, ...]
             ) -> list[dict[str, str]]:
  """The chat that asks for the annotation of `response`."""
  chat = [{'role': 'system', 'content': system_message(examples)}]
  for example in examples:
    chat.append({'role': 'user', 'content': user_message(example.prompt, example.response)})
    chat.append({'role': 'assistant', 'content': example.annotated})
  chat.append({'role': 'user', 'content': user_message(prompt, response)})
  return chat


def fix_messages(chat: list[dict[str, str]], reply: str | None,
                 error: validation.Invalid) -> list[dict[str, str]]:
  """`chat` followed by the invalid reply and a request to fix it."""
  return chat + [{'role': 'assistant', 'content': reply or ''},
                 {'role': 'user', 'content': _FIX.format(error=error.detail)}]
