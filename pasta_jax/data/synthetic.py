"""The synthetic PASTA benchmark: task families with real parallel structure.

Every example has a prompt, an annotated response (PASTA-LANG), the plain response
(its stripped form), its family and the structured facts that `check` uses to
score any answer exactly. Generation is offline and deterministic for a
(split, seed): the same call always yields the same examples, and a prompt belongs
to exactly one split (chosen by a hash of the prompt), so test prompts never
appear in training. The `preference` prompts (stage 2) hash to the training bucket
and skip the training split's prompts (`generate_preference`); `corrupt` makes the
imperfect annotations of the noisy builds (`Noise`).

Families (docs/synthetic_benchmark.md describes them with examples):

* ``reverse_join``: independent parts, then a part after `<sync/>` that copies
  the first letter of each part's result (a model that ignores sync semantics
  cannot write it).
* ``list_ops``: a list of independent items, no sync (EOS joins).
* ``sequential``: one count, answered directly: nothing to fork.
* ``mixed``: a sequential part (a header read off the prompt), independent parts
  (counting up from each number), a sync and the number the last part reached.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
import re
from typing import Callable, Iterator, Sequence

from pasta_jax import lang

SPLITS = ('train', 'validation', 'test')
# Fractions of the prompt space assigned to each split (by prompt hash).
SPLIT_FRACTIONS = {'train': 0.90, 'validation': 0.05, 'test': 0.05}
# Prompts for stage-2 sampling: from the train bucket, minus the train split's prompts.
PREFERENCE = 'preference'

WORDS = (
    'ant', 'bee', 'cat', 'cow', 'dog', 'eel', 'elk', 'emu', 'fox', 'gnu', 'hen', 'jay',
    'owl', 'pig', 'ram', 'rat', 'yak', 'bear', 'boar', 'crab', 'crow', 'deer', 'dove',
    'duck', 'frog', 'goat', 'hare', 'ibis', 'lion', 'lynx', 'mole', 'moth', 'mule',
    'newt', 'seal', 'slug', 'swan', 'toad', 'wasp', 'wolf', 'worm', 'bison', 'camel',
    'eagle', 'finch', 'gecko', 'goose', 'heron', 'horse', 'hyena', 'koala', 'llama',
    'moose', 'mouse', 'otter', 'panda', 'quail', 'raven', 'shark', 'sheep', 'skunk',
    'sloth', 'snail', 'snake', 'stork', 'tiger', 'trout', 'whale', 'zebra',
)
OPS = ('count', 'spell', 'repeat', 'double')


@dataclasses.dataclass(frozen=True)
class Example:
  """One benchmark example."""

  prompt: str
  annotated: str
  plain: str
  family: str
  facts: str  # JSON

  def document(self, quantum: int = lang.DEFAULT_QUANTUM) -> lang.Document:
    return lang.parse(self.annotated, quantum=quantum)


def estimate_length(text: str) -> int:
  """The default predicted length of a body: its character count.

  The data pipeline can re-measure promised lengths with the real tokenizer.
  """
  return len(text)


def _promise(topic: str, body: str, length_fn: Callable[[str], int],
             quantum: int) -> lang.Promise:
  tokens = -(-length_fn(body) // quantum) * quantum
  return lang.Promise(topic, tokens, body)


def _dashed(word: str) -> str:
  return '-'.join(word)


def _counting(start: int, steps: int) -> str:
  return ' '.join(str(start + i) for i in range(1, steps + 1))


def _op_item(rng: random.Random) -> tuple[str, str]:
  """A list item: (its text in the prompt, its result)."""
  op = rng.choice(OPS)
  if op == 'count':
    start, steps = rng.randrange(100), rng.randint(2, 10)
    return f'count {steps} from {start}', _counting(start, steps)
  if op == 'spell':
    word = rng.choice(WORDS)
    return f'spell {word}', _dashed(word)
  if op == 'repeat':
    word, times = rng.choice(WORDS), rng.randint(2, 5)
    return f'repeat {word} {times}', ' '.join([word] * times)
  number = rng.randrange(100)
  return f'double {number}', str(2 * number)


# Each family: rng -> (prompt, parts, facts). Parts are lang nodes, plain strings,
# or (topic, body) pairs that become promises with their predicted lengths.
#
# Items are labelled a), b), ... in the prompt (or in the main text before the
# promises) and each promise's topic is just its label: a promise then costs the
# main thread three tokens (PROMISE, label, length), and the async thread finds its
# item by looking the label up, which small models learn quickly.

LABELS = 'abcdefgh'


def _labelled(items: Sequence[str]) -> str:
  return ' '.join(f'{LABELS[i]}) {item}' for i, item in enumerate(items))


def _reverse_join(rng: random.Random):
  words = rng.sample(WORDS, rng.randint(4, 8))
  rev = [w[::-1] for w in words]
  ends = '-'.join(r[0] for r in rev)
  prompt = f'spell and reverse each word, then join the first letters: {_labelled(words)}'
  parts = [f'{len(words)} words.\n']
  parts += [(LABELS[i], f'{LABELS[i]}) {w} spelled: {_dashed(w)}; reversed: {_dashed(r)}.\n')
            for i, (w, r) in enumerate(zip(words, rev))]
  parts += [lang.Sync(), f'joined: {ends}.']
  return prompt, parts, {'words': words, 'reversed': rev, 'joined': ends}


def _list_ops(rng: random.Random):
  items = [_op_item(rng) for _ in range(rng.randint(4, 8))]
  tasks = [task for task, _ in items]
  prompt = f'do each: {_labelled(tasks)}'
  parts = ['results:\n']
  parts += [(LABELS[i], f'{LABELS[i]}) {task}: {result}\n')
            for i, (task, result) in enumerate(items)]
  parts += [f'{len(items)} done.']
  return prompt, parts, {'tasks': tasks, 'results': [r for _, r in items]}


def _sequential(rng: random.Random):
  # One count, answered directly: nothing to fork. Counts start anywhere below
  # 700, so that every split has enough distinct prompts (the other list
  # operations have a few hundred prompts in all: too few to learn them alone).
  start, steps = rng.randrange(700), rng.randint(2, 10)
  task, result = f'count {steps} from {start}', _counting(start, steps)
  return task, [f'answer: {result}.'], {'task': task, 'answer': result}


def _mixed(rng: random.Random):
  numbers = rng.sample(range(90), rng.randint(4, 6))
  steps = rng.randint(5, 10)
  last = numbers[-1] + steps
  prompt = f'count {steps} up from each: {_labelled([str(n) for n in numbers])}'
  parts = [f'{len(numbers)} numbers, {steps} steps each.\n']
  parts += [(LABELS[i], f'{LABELS[i]}) from {n}: {_counting(n, steps)}\n')
            for i, n in enumerate(numbers)]
  parts += [lang.Sync(), f'last: {last}.']
  return prompt, parts, {'numbers': numbers, 'steps': steps, 'last': last}


FAMILIES: dict[str, Callable[[random.Random], tuple]] = {
    'reverse_join': _reverse_join,
    'list_ops': _list_ops,
    'sequential': _sequential,
    'mixed': _mixed,
}


def split_of(prompt: str) -> str:
  """The split a prompt belongs to (a fixed hash: stable across versions of Python)."""
  h = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], 'big') / 2.0**64
  edge = 0.0
  for split in SPLITS:
    edge += SPLIT_FRACTIONS[split]
    if h < edge:
      return split
  return SPLITS[-1]


def make_example(family: str, rng: random.Random, *,
                 length_fn: Callable[[str], int] = estimate_length,
                 quantum: int = lang.DEFAULT_QUANTUM) -> Example:
  prompt, parts, facts = FAMILIES[family](rng)
  nodes = [_promise(p[0], p[1], length_fn, quantum) if isinstance(p, tuple) else p
           for p in parts]
  doc = lang.Document(tuple(nodes))
  return Example(prompt, lang.serialize(doc), lang.strip(doc), family,
                 json.dumps(facts, sort_keys=True))


def _check_families(families: Sequence[str] | None) -> tuple[str, ...]:
  families = tuple(families or FAMILIES)
  unknown = [f for f in families if f not in FAMILIES]
  if unknown:
    raise ValueError(f'unknown families {unknown}; expected some of {tuple(FAMILIES)}')
  return families


def _draw(rng: random.Random, bucket: str, num_examples: int, families: tuple[str, ...],
          exclude: frozenset[str], what: str, length_fn: Callable[[str], int],
          quantum: int) -> Iterator[Example]:
  """Examples from `rng` whose prompts hash to `bucket`, distinct and not in `exclude`."""
  seen: set[str] = set()
  count, attempts = 0, 0
  while count < num_examples:
    family = families[count % len(families)]
    example = make_example(family, rng, length_fn=length_fn, quantum=quantum)
    attempts += 1
    if attempts > 1000 * (num_examples + 10):
      raise RuntimeError(f'could not find {num_examples} distinct {what} prompts; '
                         'the prompt space is too small for this request')
    if (example.prompt in seen or example.prompt in exclude
        or split_of(example.prompt) != bucket):
      continue
    seen.add(example.prompt)
    count += 1
    yield example


def generate(split: str, num_examples: int, *, seed: int = 0,
             families: Sequence[str] | None = None,
             length_fn: Callable[[str], int] = estimate_length,
             quantum: int = lang.DEFAULT_QUANTUM) -> Iterator[Example]:
  """Yields `num_examples` distinct examples of one split, deterministically.

  Families are cycled in order, so every family gets an equal share. Prompts are
  unique within the stream and belong only to `split`.
  """
  if split not in SPLITS:
    raise ValueError(f'unknown split {split!r}; expected one of {SPLITS}')
  families = _check_families(families)
  rng = random.Random(f'pasta_synth/{seed}/{split}')
  return _draw(rng, split, num_examples, families, frozenset(), split, length_fn, quantum)


def generate_preference(num_examples: int, *, num_train: int, seed: int = 0,
                        families: Sequence[str] | None = None,
                        length_fn: Callable[[str], int] = estimate_length,
                        quantum: int = lang.DEFAULT_QUANTUM) -> Iterator[Example]:
  """Prompts for stage-2 sampling (the `preference` split), deterministically.

  They hash to the training bucket, so they are disjoint from validation and test,
  and they skip the prompts of `generate('train', num_train, seed=seed,
  families=families)`, so they are disjoint from that training split too. They
  come from a random stream of their own: the other splits do not change.
  """
  families = _check_families(families)
  train = frozenset(e.prompt for e in generate('train', num_train, seed=seed,
                                                families=families))
  rng = random.Random(f'pasta_synth/{seed}/{PREFERENCE}')
  return _draw(rng, 'train', num_examples, families, train, PREFERENCE, length_fn,
               quantum)


# ----------------------------------------------------------------------------
# Imperfect annotations (the `noisy` builder configs): the same answers, other tags.

# The post-sync line of each family that has one, and the labels whose results it
# copies (n = the number of parts): the thread that over-annotation puts it in is
# forked before those parts are joined, so it cannot see them.
SUMMARIES = {
    'reverse_join': ('joined', lambda n: LABELS[:n]),  # the first letter of every part
    'mixed': ('last', lambda n: LABELS[n - 1]),  # where the last part's count ended
}


@dataclasses.dataclass(frozen=True)
class Noise:
  """Rates of imperfect annotations (docs/synthetic_benchmark.md, "Noisy annotations").

  Attributes:
    under: fraction of the examples with promises (reverse_join, list_ops, mixed)
      that leave some of their independent parts inline (1 to all, at random).
    over: fraction of the examples with a post-sync summary (reverse_join, mixed)
      that put the summary in an async thread of its own, which cannot see the
      results it copies. Exclusive with `under`: under + over <= 1.
    tokens: fraction of the examples that still have promises (after the two
      above) whose promised lengths are all wrong.
    tokens_factors: a wrong length is the right one times one of these (drawn per
      promise), rounded up to the quantum and capped at `max_tokens`; a factor
      that leaves it right is not drawn.
    max_tokens: the largest promised length (the tokenizer's last length token).
  """

  under: float = 0.0
  over: float = 0.0
  tokens: float = 0.0
  tokens_factors: tuple[float, ...] = (0.5, 2.0)
  max_tokens: int = 100

  def __post_init__(self):
    for name in ('under', 'over', 'tokens'):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise ValueError(f'Noise.{name} must be in [0, 1], got {getattr(self, name)}')
    if self.under + self.over > 1.0:
      raise ValueError(f'Noise.under + Noise.over must be <= 1 (they exclude each '
                       f'other), got {self.under} + {self.over}')
    if not self.tokens_factors or any(f < 0 or f == 1 for f in self.tokens_factors):
      raise ValueError(f'Noise.tokens_factors must be non-negative and not 1, got '
                       f'{self.tokens_factors}')

  @property
  def active(self) -> bool:
    return bool(self.under or self.over or self.tokens)


def _wrong_tokens(tokens: int, factor: float, noise: Noise, quantum: int) -> int:
  wrong = math.ceil(round(tokens * factor / quantum, 6)) * quantum
  return min(wrong, noise.max_tokens // quantum * quantum)


def corrupt(example: Example, noise: Noise, seed: int = 0, *,
            length_fn: Callable[[str], int] = estimate_length,
            quantum: int = lang.DEFAULT_QUANTUM) -> tuple[Example, dict]:
  """An example with imperfect tags, and what was done to it.

  Only `annotated` changes: it still parses and strips to `example.plain`. The
  random choices depend on (seed, prompt) alone. The record has `under` (the
  labels left inline), `over` ({'topic', 'needs': labels it cannot see}) and
  `tokens` ({label: [right, promised]}) where they were applied; {} if none was.
  """
  rng = random.Random(f'pasta_synth/{seed}/noise/{example.prompt}')
  nodes = list(example.document(quantum).nodes)
  promises = [n for n in nodes if isinstance(n, lang.Promise)]
  record: dict = {}
  if not promises:
    return example, record
  summary = SUMMARIES.get(example.family)
  u = rng.random()
  if summary and u < noise.over:
    # [..., Sync, Text(summary)] -> [..., Promise(summary)]: EOS joins every thread.
    assert isinstance(nodes[-2], lang.Sync) and isinstance(nodes[-1], lang.Text)
    topic, needs = summary
    nodes[-2:] = [_promise(topic, nodes[-1].text, length_fn, quantum)]
    record['over'] = {'topic': topic, 'needs': list(needs(len(promises)))}
  elif u < (noise.over if summary else 0.0) + noise.under:
    inline = rng.sample(promises, rng.randint(1, len(promises)))
    nodes = [lang.Text(n.body) if n in inline else n for n in nodes]
    if len(inline) == len(promises):  # nothing left to join
      nodes = [n for n in nodes if not isinstance(n, lang.Sync)]
    record['under'] = sorted(p.topic for p in inline)
  if any(isinstance(n, lang.Promise) for n in nodes) and rng.random() < noise.tokens:
    wrong = {}
    for i, node in enumerate(nodes):
      if isinstance(node, lang.Promise):
        options = sorted({_wrong_tokens(node.tokens, f, noise, quantum)
                          for f in noise.tokens_factors} - {node.tokens})
        if options:
          nodes[i] = dataclasses.replace(node, tokens=rng.choice(options))
          wrong[node.topic] = [node.tokens, nodes[i].tokens]
    if wrong:
      record['tokens'] = wrong
  doc = lang.Document(tuple(nodes))
  assert lang.strip(doc) == example.plain, 'noise must not change the answer'
  return dataclasses.replace(example, annotated=lang.serialize(doc)), record


# ----------------------------------------------------------------------------
# Checkers: answer text -> quality in [0, 1], field by field.


def _norm(text: str) -> str:
  return ' '.join(text.split())


def _fields(answer: str, pattern: str) -> list[tuple[str, ...]]:
  return re.findall(pattern, _norm(answer))


def _score(expected: Sequence[tuple[str, ...]], found: Sequence[tuple[str, ...]]) -> float:
  """Fraction of labelled items right; item i is (label, fields...).

  Items are matched by label (the first occurrence counts); extra or repeated
  labels count against the score.
  """
  by_label: dict[str, tuple[str, ...]] = {}
  for item in found:
    by_label.setdefault(item[0], item)
  hits = sum(1 for item in expected if by_label.get(item[0]) == item)
  return hits / max(len(expected), len(found), 1)


def check(family: str, facts: str | dict, answer: str) -> float:
  """Scores an answer (plain text, tags stripped) against an example's facts.

  Each family's answer is a fixed set of fields (counts, one line per item, the
  summary after the sync); the score is the fraction of fields exactly right,
  after folding whitespace. Missing, extra or reordered items count as wrong.
  """
  facts = json.loads(facts) if isinstance(facts, str) else facts
  if family == 'reverse_join':
    n = len(facts['words'])
    count_ok = _fields(answer, r'(\d+) words\.')[:1] == [str(n)]
    expected = [(LABELS[i], w, _dashed(w), _dashed(r))
                for i, (w, r) in enumerate(zip(facts['words'], facts['reversed']))]
    found = _fields(answer, r'([a-h])\) (\w+) spelled: ([\w-]+); reversed: ([\w-]+)\.')
    joined_ok = _fields(answer, r'joined: ([\w-]+)\.')[-1:] == [facts['joined']]
    return (count_ok + _score(expected, found) * n + joined_ok) / (n + 2)
  if family == 'list_ops':
    n = len(facts['tasks'])
    header_ok = 'results:' in _norm(answer)
    expected = [(LABELS[i], t, r) for i, (t, r) in enumerate(zip(facts['tasks'],
                                                                  facts['results']))]
    # An item runs from its label to the next label or the closing count.
    found = _fields(answer, r'([a-h])\) ([a-z]+ [\w ]+?): ([\w -]+?)'
                            r'(?= \w\) | \d+ done\.|$)')
    count_ok = _fields(answer, r'(\d+) done\.')[-1:] == [str(n)]
    return (header_ok + _score(expected, found) * n + count_ok) / (n + 2)
  if family == 'sequential':
    found = _fields(answer, r'answer: ([\w -]+)\.')
    return float(found[-1:] == [facts['answer']])
  if family == 'mixed':
    n = len(facts['numbers'])
    header = f'{n} numbers, {facts["steps"]} steps each.'
    header_ok = header in _norm(answer)
    expected = [(LABELS[i], str(x), _counting(x, facts['steps']))
                for i, x in enumerate(facts['numbers'])]
    found = _fields(answer, r'([a-h])\) from (\d+): ([\d ]+?)(?= \w\) from | last:|$)')
    last_ok = _fields(answer, r'last: (\d+)\.')[-1:] == [str(facts['last'])]
    return (header_ok + _score(expected, found) * n + last_ok) / (n + 2)
  raise ValueError(f'unknown family {family!r}; expected one of {tuple(FAMILIES)}')
