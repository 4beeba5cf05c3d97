"""TFDS builders: the synthetic benchmark and user JSONL files of annotated responses.

Both write ArrayRecord files (no TensorFlow needed, to build or to read) with the
same text features, read at training time by random access through
`tfds.data_source` (see `pasta_jax.data.pipeline`):

  prompt, annotated_response, plain_response, family, facts (JSON), extras (JSON)

Build them with `python -m pasta_jax.data.build` (the README shows how) or from
Python with `builder(...).download_and_prepare()`.
"""

from __future__ import annotations

import codecs
import collections
import dataclasses
import hashlib
import json
import os
from typing import Any, Iterator, Mapping

from absl import logging
import tensorflow_datasets as tfds

from pasta_jax import errors
from pasta_jax import lang
from pasta_jax.data import synthetic

FILE_FORMAT = 'array_record'
ON_ERROR = ('fail', 'skip')


def _features() -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({
      'prompt': tfds.features.Text(),
      'annotated_response': tfds.features.Text(),
      'plain_response': tfds.features.Text(),
      'family': tfds.features.Text(),
      'facts': tfds.features.Text(),
      'extras': tfds.features.Text(),
  })


# ----------------------------------------------------------------------------
# The synthetic benchmark.


# Rates of the `noisy` configs (docs/synthetic_benchmark.md, "Noisy annotations").
NOISY = {'noise_under': 0.2, 'noise_over': 0.2, 'noise_tokens': 0.2}
# Who writes the train and validation annotations: the generator ('reference') or
# the rule-based annotator on the stripped answers ('rules': the APAR-style
# baseline's data, docs/design.md section 9).
ANNOTATORS = ('reference', 'rules')
# The splits a config's `annotator` rewrites (test and preference keep the reference
# annotations: evaluation and stage 2 read only their prompts and facts).
ANNOTATED_SPLITS = ('train', 'validation')


@dataclasses.dataclass
class PastaSynthConfig(tfds.core.BuilderConfig):
  """Sizes, seed and annotation noise of one build of the synthetic benchmark.

  The `noise_*` fields are `synthetic.Noise`'s (rates of imperfect annotations),
  applied to `noisy_splits` only; test and preference are never noisy.
  `annotator` 'rules' replaces the train and validation annotations by the
  rule-based annotator's of the stripped answers (`rules_annotated`); it
  excludes noise.
  """

  num_train: int = 20_000
  num_validation: int = 500
  num_test: int = 500
  num_preference: int = 2000
  seed: int = 0
  families: tuple[str, ...] = tuple(synthetic.FAMILIES)
  quantum: int = lang.DEFAULT_QUANTUM
  noise_under: float = 0.0
  noise_over: float = 0.0
  noise_tokens: float = 0.0
  noise_tokens_factors: tuple[float, ...] = (0.5, 2.0)
  noise_max_tokens: int = synthetic.Noise.max_tokens
  noisy_splits: tuple[str, ...] = ('train', 'validation')
  annotator: str = 'reference'

  @property
  def noise(self) -> synthetic.Noise:
    return synthetic.Noise(under=self.noise_under, over=self.noise_over,
                           tokens=self.noise_tokens,
                           tokens_factors=tuple(self.noise_tokens_factors),
                           max_tokens=self.noise_max_tokens)


class PastaSynth(tfds.core.GeneratorBasedBuilder):
  """The synthetic PASTA benchmark (docs/synthetic_benchmark.md), generated offline."""

  VERSION = tfds.core.Version('1.2.0')
  RELEASE_NOTES = {
      '1.0.0': 'Families reverse_join, list_ops, sequential, mixed.',
      '1.1.0': ('4-8 parts per parallel answer; short post-sync summaries (reverse_join: '
                'the first letters, mixed: the last number); mixed: a header instead of '
                'sorting; sequential: one count (count N from X) instead of count-to and sort.'),
      '1.2.0': ('New split `preference` (prompts for stage-2 sampling, disjoint from '
                'train, validation and test) and configs `noisy` and `tiny_noisy` '
                '(imperfect train/validation annotations, recorded in `extras`). '
                'train, validation and test of `default` and `tiny` are unchanged '
                '(byte-identical to 1.1.0).'),
  }
  BUILDER_CONFIGS = [
      PastaSynthConfig(name='default', description='The full benchmark.'),
      PastaSynthConfig(name='tiny', description='A few hundred examples for tests.',
                       num_train=400, num_validation=40, num_test=40, num_preference=40),
      PastaSynthConfig(name='noisy', description=(
          'The full benchmark with imperfect train/validation annotations.'), **NOISY),
      PastaSynthConfig(name='tiny_noisy', description='tiny with the noise of noisy.',
                       num_train=400, num_validation=40, num_test=40, num_preference=40,
                       **NOISY),
      PastaSynthConfig(name='apar', description=(
          'The full benchmark with train/validation annotations by the rule-based '
          'annotator (the APAR-style baseline).'), annotator='rules'),
      PastaSynthConfig(name='tiny_apar', description='tiny, annotated as apar.',
                       num_train=400, num_validation=40, num_test=40, num_preference=40,
                       annotator='rules'),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=('Synthetic PASTA benchmark: prompts whose answers have real '
                     'parallel structure, PASTA-LANG reference annotations and exact '
                     'checkers (pasta_jax.data.synthetic.check).'),
        features=_features(), homepage='https://arxiv.org/abs/2502.11517')

  def _split_generators(self, dl_manager):
    del dl_manager  # Generated offline.
    config: PastaSynthConfig = self.builder_config
    unknown = set(config.noisy_splits) - {'train', 'validation'}
    if unknown:
      raise ValueError(f'noisy_splits may hold train and validation, got {sorted(unknown)}')
    if config.annotator not in ANNOTATORS:
      raise ValueError(f'annotator must be one of {ANNOTATORS}, got {config.annotator!r}')
    if config.annotator != 'reference' and config.noise.active:
      raise ValueError(f'annotator={config.annotator!r} rewrites the annotations that noise '
                       'corrupts: give one or the other')
    sizes = {'train': config.num_train, 'validation': config.num_validation,
             'test': config.num_test}
    splits = {split: self._generate_examples(split, n) for split, n in sizes.items()}
    splits[synthetic.PREFERENCE] = self._generate_examples(synthetic.PREFERENCE,
                                                           config.num_preference)
    return splits

  def _generate_examples(self, split: str, num_examples: int):
    config: PastaSynthConfig = self.builder_config
    if split == synthetic.PREFERENCE:
      examples = synthetic.generate_preference(
          num_examples, num_train=config.num_train, seed=config.seed,
          families=config.families, quantum=config.quantum)
    else:
      examples = synthetic.generate(split, num_examples, seed=config.seed,
                                    families=config.families, quantum=config.quantum)
    noise = config.noise if split in config.noisy_splits else synthetic.Noise()
    rules = config.annotator == 'rules' and split in ANNOTATED_SPLITS
    outcomes = collections.Counter()
    for i, example in enumerate(examples):
      extras = '{}'
      if noise.active:
        example, record = synthetic.corrupt(example, noise, config.seed,
                                            quantum=config.quantum)
        extras = json.dumps({'noise': record}, sort_keys=True)
      if rules:
        example, record = rules_annotated(example, config.quantum)
        outcomes[example.family, record['outcome']] += 1
        extras = json.dumps({'rules': record}, sort_keys=True)
      yield i, {'prompt': example.prompt, 'annotated_response': example.annotated,
                'plain_response': example.plain, 'family': example.family,
                'facts': example.facts, 'extras': extras}
    if rules:
      print(f'pasta_synth/{config.name} {split}: {rules_summary(outcomes)}')


def rules_annotated(example: synthetic.Example,
                    quantum: int = lang.DEFAULT_QUANTUM) -> tuple[synthetic.Example, dict]:
  """The example annotated by the rule-based annotator (the `annotation` package's
  `rules`, validated as `python -m pasta_jax.annotate --annotator=rules` does) from its
  stripped answer, and what it did: {'outcome': 'annotated' or 'unchanged-no-tags'
  (no list: the answer stays sequential), 'promises': n}. Promised lengths are the
  rules' estimates rounded up to `quantum` (training re-measures them by default)."""
  # Imported here: the annotation runner pulls in the chat-completions client.
  from pasta_jax.annotation import runner  # pylint: disable=g-import-not-at-top
  from pasta_jax.annotation import validation  # pylint: disable=g-import-not-at-top
  annotation = runner.RulesAnnotator().annotate(example.prompt, example.plain)
  if annotation.document is None:  # the rules only add tags; this is a bug
    raise AssertionError(f'the rules annotator broke an answer: {annotation.invalid}')
  doc = validation.Lengths(quantum=quantum).apply(annotation.document)
  assert lang.strip(doc) == example.plain
  outcome = runner.ANNOTATED if doc.promises else runner.UNCHANGED
  return (dataclasses.replace(example, annotated=lang.serialize(doc)),
          {'outcome': outcome, 'promises': len(doc.promises)})


def rules_summary(outcomes: Mapping[tuple[str, str], int]) -> str:
  """'rules annotator: 300 of 400 answers annotated, 100 left sequential (per
  family ...)' from counts by (family, outcome)."""
  # Imported here: see rules_annotated.
  from pasta_jax.annotation import runner  # pylint: disable=g-import-not-at-top
  total = sum(outcomes.values())
  changed = sum(n for (_, o), n in outcomes.items() if o == runner.ANNOTATED)
  annotated = lambda f: outcomes[f, runner.ANNOTATED]  # noqa: E731
  per_family = ', '.join(f'{f} {annotated(f)}/{annotated(f) + outcomes[f, runner.UNCHANGED]}'
                         for f in sorted({f for f, _ in outcomes}))
  return (f'rules annotator: {changed} of {total} answers annotated, {total - changed} '
          f'left sequential (annotated per family: {per_family})')


# ----------------------------------------------------------------------------
# User JSONL files.


class JsonlError(errors.DataError):
  """A bad line in a JSONL file: names the file, the line and the problem."""

  def __init__(self, path: str, line: int, problem: str):
    self.path, self.line, self.problem = path, line, problem
    super().__init__(f'{path}:{line}: {problem}')


# The training config's default (config.data.max_promise_tokens): LEN_0 .. LEN_10.
DEFAULT_MAX_PROMISE_TOKENS = 100


@dataclasses.dataclass
class PastaJsonlConfig(tfds.core.BuilderConfig):
  """A dataset of annotated responses from JSONL files (one file or list per split).

  Each line is a JSON object with `prompt` and `annotated_response` (PASTA-LANG);
  optional `family` and `facts` are kept, any other keys go to `extras`.

  Attributes:
    paths: split name -> path (or tuple of paths) of JSONL files.
    on_error: 'fail' stops at the first bad line with a `JsonlError`; 'skip' drops
      bad lines, counts them per problem and reports the counts (log and the
      dataset's metadata, `info.metadata['skipped']`).
    quantum: promised lengths must be multiples of it (1 accepts any integer).
    max_promise_tokens: the largest promised length, that of the tokenizer's last
      length token (`tokens.ControlTokens.max_promise_tokens`); a longer one is a
      bad line.
  """

  paths: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  on_error: str = 'fail'
  quantum: int = lang.DEFAULT_QUANTUM
  max_promise_tokens: int = DEFAULT_MAX_PROMISE_TOKENS


class PastaJsonl(tfds.core.GeneratorBasedBuilder):
  """Annotated responses from user JSONL files (e.g. SlimOrca annotated by an LLM).

  A build records its inputs (`inputs_record`: each file's sha256 and the settings)
  in `info.metadata['inputs']`; `changes()` says how the current files and settings
  differ from those of the existing build (`pasta_jax.data.build` rebuilds or
  refuses a stale one).
  """

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First version.'}

  def __init__(self, *, config: PastaJsonlConfig, **kwargs):
    if not isinstance(config, PastaJsonlConfig):
      raise TypeError('PastaJsonl needs config=PastaJsonlConfig(name=..., paths=...)')
    if not config.paths:
      raise ValueError('PastaJsonlConfig.paths is empty: give at least one split')
    if config.on_error not in ON_ERROR:
      raise ValueError(f'on_error must be one of {ON_ERROR}, got {config.on_error!r}')
    for split, paths in config.paths.items():
      for path in _as_paths(paths):
        check_file(path, f'split {split!r}')
    self.inputs = inputs_record(config)
    self.skipped: dict[str, collections.Counter] = {}
    super().__init__(config=config, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description='User-provided PASTA-LANG annotated responses.',
        features=_features(), metadata=tfds.core.MetadataDict())

  def changes(self) -> list[str]:
    """How the inputs differ from those of the existing build ([] if none or unbuilt)."""
    if not self.is_prepared():
      return []
    return input_changes(dict(self.info.metadata or {}).get('inputs'), self.inputs)

  def _log_download_bytes(self) -> None:
    # TFDS would print "Downloading and preparing dataset Unknown size ...".
    files = sum(len(_as_paths(p)) for p in self.builder_config.paths.values())
    print(f'Building {self.info.full_name} from {files} JSONL file(s) in {self.data_dir}')

  def _log_download_done(self) -> None:
    pass

  def _split_generators(self, dl_manager):
    del dl_manager
    self.info.metadata['inputs'] = self.inputs
    return {split: self._generate_examples(split, _as_paths(paths))
            for split, paths in self.builder_config.paths.items()}

  def _generate_examples(self, split: str, paths: tuple[str, ...]):
    skipped = self.skipped.setdefault(split, collections.Counter())
    count = 0
    for file_index, path in enumerate(paths):
      for line_number, record in read_jsonl(path, self.builder_config, skipped):
        count += 1
        yield f'{file_index}:{line_number}', record
    files = ', '.join(paths)
    if skipped:
      logging.warning('pasta_jsonl split %r: skipped %d bad lines: %s', split,
                      sum(skipped.values()), dict(skipped))
      if not count:
        raise errors.DataError(
            f'split {split!r}: every line of {files} is bad ({sum(skipped.values())} '
            f'skipped: {dict(skipped)}); build with --on_error=fail to see the first one')
    if not count:
      raise errors.DataError(
          f'split {split!r}: {files} holds no examples (empty, or blank lines only); '
          'give one JSON object per line, or leave the split out')
    self.info.metadata['skipped'] = {s: dict(c) for s, c in self.skipped.items()}


def _as_paths(paths: Any) -> tuple[str, ...]:
  return (paths,) if isinstance(paths, (str, os.PathLike)) else tuple(paths)


def check_file(path: str, what: str) -> None:
  """Raises DataError unless `path` is a readable file (`what`: e.g. "split 'train'")."""
  if os.path.isdir(path):
    raise errors.DataError(f'{what}: {path} is a directory, not a JSONL file')
  if not os.path.isfile(path):
    raise errors.DataError(f'{what}: JSONL file {path} does not exist')
  if not os.access(path, os.R_OK):
    raise errors.DataError(f'{what}: JSONL file {path} is not readable (permissions)')


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      digest.update(chunk)
  return digest.hexdigest()


def inputs_record(config: PastaJsonlConfig) -> dict[str, Any]:
  """What a build of `config` depends on: each file's sha256 and the settings."""
  return {'files': {split: [{'path': os.path.abspath(path), 'sha256': _sha256(path)}
                            for path in _as_paths(paths)]
                    for split, paths in sorted(config.paths.items())},
          'on_error': config.on_error, 'quantum': config.quantum,
          'max_promise_tokens': config.max_promise_tokens}


def input_changes(built: Mapping[str, Any] | None, current: Mapping[str, Any]) -> list[str]:
  """How `current` (an `inputs_record`) differs from `built`; files by content only."""
  if not built:
    return ['it has no record of its input files (built by an older version)']
  changes = []
  old_files, new_files = built.get('files', {}), current['files']
  for split in sorted(set(old_files) | set(new_files)):
    if split not in new_files:
      changes.append(f'split {split!r} is no longer given')
    elif split not in old_files:
      changes.append(f'split {split!r} is new')
    else:
      old = [f['sha256'] for f in old_files[split]]
      new = [f['sha256'] for f in new_files[split]]
      if old != new:
        changed = [f['path'] for i, f in enumerate(new_files[split])
                   if i >= len(old) or old[i] != f['sha256']]
        changes.append(f'{", ".join(changed) or f"split {split!r}"} changed' if
                       len(old) == len(new) else f'split {split!r} has other files')
  for key in ('on_error', 'quantum', 'max_promise_tokens'):
    if built.get(key) != current[key]:
      changes.append(f'{key} was {built.get(key)!r}, is {current[key]!r}')
  return changes


def read_jsonl(path: str, config: PastaJsonlConfig,
               skipped: collections.Counter | None = None
               ) -> Iterator[tuple[int, dict[str, str]]]:
  """Yields (line number, record) for each good line; see PastaJsonlConfig.on_error."""
  with open(path, 'rb') as f:
    for line_number, raw in enumerate(f, 1):
      try:
        line = decode_line(raw, path, line_number)
        if not line.strip():
          continue
        record = _record(json_line=line, path=path, line=line_number, config=config)
      except JsonlError as e:
        if config.on_error == 'fail':
          raise
        if skipped is not None:
          skipped[e.problem.split(':')[0]] += 1
        continue
      yield line_number, record


def decode_line(raw: bytes, path: str, line: int) -> str:
  """One JSONL line as text (a leading UTF-8 BOM dropped); JsonlError naming
  path:line for invalid UTF-8 (also the annotator's reader, annotation/formats.py)."""
  if line == 1 and raw.startswith(codecs.BOM_UTF8):
    raw = raw[len(codecs.BOM_UTF8):]
  try:
    return raw.decode('utf-8')
  except UnicodeDecodeError as e:
    raise JsonlError(path, line, f'invalid UTF-8: byte {raw[e.start]:#04x} at byte '
                     f'{e.start + 1} of the line (save the file as UTF-8)') from None


def _record(json_line: str, path: str, line: int, config: PastaJsonlConfig) -> dict:
  try:
    row = json.loads(json_line)
  except json.JSONDecodeError as e:
    raise JsonlError(path, line, f'invalid JSON: {e}') from None
  if not isinstance(row, dict):
    raise JsonlError(path, line, f'invalid record: expected a JSON object, got '
                     f'{type(row).__name__}')
  for key in ('prompt', 'annotated_response'):
    if key not in row:
      raise JsonlError(path, line, f'missing field: {key!r}')
    if not isinstance(row[key], str):
      raise JsonlError(path, line, f'invalid field: {key!r} must be a string, got '
                       f'{type(row[key]).__name__}')
  try:
    doc = lang.parse(row['annotated_response'], quantum=config.quantum,
                     max_tokens=config.max_promise_tokens)
  except lang.PromisedLengthError as e:
    raise JsonlError(path, line, f'promised length too long in annotated_response: {e}; '
                     f'the length tokens stop at max_promise_tokens='
                     f'{config.max_promise_tokens} (--max_promise_tokens, '
                     'config.data.max_promise_tokens)') from None
  except lang.PastaLangError as e:
    raise JsonlError(path, line, f'PASTA-LANG error in annotated_response: {e}') from None
  extras = {k: v for k, v in row.items()
            if k not in ('prompt', 'annotated_response', 'family', 'facts')}
  facts = row.get('facts', {})
  return {'prompt': row['prompt'], 'annotated_response': row['annotated_response'],
          'plain_response': lang.strip(doc), 'family': str(row.get('family', '')),
          'facts': facts if isinstance(facts, str) else json.dumps(facts, sort_keys=True),
          'extras': json.dumps(extras, sort_keys=True)}
