"""Stage 2 sampling: N annotated responses per prompt through the interpreter.

    store = SampleStore('workdir/round_1/samples.jsonl')
    stats = sample_prompts(interp, prompts, prompt_ids, n=10, seed=0, store=store)
    samples = store.samples()          # {prompt id: [Sample, ...]} (index order)

A request is one (prompt, sample index). Request (p, i) samples with the seed
`request_seed(seed, p, i)`; the interpreter's randomness depends only on a
request's seed, the round and the slot (`interpreter.sampling.sample`), so a
sample is the same whatever batch, batch size or order it is drawn in.

Prompts are sampled in chunks; each finished chunk is one line of a JSONL file
(`SampleStore`), written with one append, so a killed run leaves at most a
partial last line: it is ignored (and counted) when the store is read, cut off
before the next append, and that chunk is sampled again, with the same seeds.

A prompt longer than the interpreter takes is never sampled: its chunk lists it
under `prompt_too_long` with the interpreter's explanation, and it counts as done.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import time
from typing import Any, Iterator, Mapping, Sequence

from absl import logging
import numpy as np

from pasta_jax.interpreter import api

PromptId = str | int

# Bumped when a store line's fields change meaning.
STORE_VERSION = 1


def request_seed(seed: int, prompt_id: PromptId, index: int) -> int:
  """The interpreter seed, in [0, 2**32), of sample `index` of a prompt.

  A hash (SHA-256) of (seed, str(prompt_id), index): stable across processes
  and Python versions, and independent of where the request sits in a batch.
  Prompt ids 7 and '7' get the same seed.
  """
  key = f'pasta_jax.preference/{int(seed)}/{prompt_id}/{int(index)}'.encode()
  return int.from_bytes(hashlib.sha256(key).digest()[:4], 'big')


@dataclasses.dataclass(frozen=True)
class Sample:
  """One sampled response.

  Attributes:
    prompt_id: the prompt's id.
    index: the sample's index among the prompt's N (0 .. N - 1).
    seed: its interpreter seed (`request_seed`).
    status: 'done', 'budget' or 'cache_full' (`Result.status`).
    annotated: the PASTA-LANG document (None when a stop cut an element).
    text: the final answer, tags stripped (`Result.text`).
    ids: the response in token form, training layout (`Result.ids`).
    steps: decode rounds, the prefill round included (`Result.steps`).
    tokens: tokens sampled by all threads (`Result.total_tokens`).
    stripped_tokens: tokens of `text` plus EOS: the length of the same answer
      written sequentially (`encoding.Encoded.plain`), the fallback baseline of
      the theoretical speedup.
    prompt_tokens: the prompt's length in tokens.
    threads: threads the response ran (1 = main thread only).
  """

  prompt_id: PromptId
  index: int
  seed: int
  status: str
  annotated: str | None
  text: str
  ids: tuple[int, ...]
  steps: int
  tokens: int
  stripped_tokens: int
  prompt_tokens: int
  threads: int

  def to_json(self) -> dict[str, Any]:
    return dict(dataclasses.asdict(self), ids=list(self.ids))

  @classmethod
  def from_json(cls, value: Mapping[str, Any]) -> Sample:
    return cls(**dict(value, ids=tuple(value['ids'])))


@dataclasses.dataclass(frozen=True)
class SamplingStats:
  """What sampling did, and how fast.

  Attributes:
    prompts: prompts handled (sampled or too long).
    samples: samples drawn (dummy requests not counted).
    prompt_too_long: prompts not sampled because they are too long.
    padding: dummy requests that filled the last batch of a chunk (dropped).
    calls: interpreter calls (batches) run.
    seconds: wall-clock seconds of those calls (compilation included).
    statuses: samples per status.
  """

  prompts: int = 0
  samples: int = 0
  prompt_too_long: int = 0
  padding: int = 0
  calls: int = 0
  seconds: float = 0.0
  statuses: Mapping[str, int] = dataclasses.field(default_factory=dict)

  @property
  def samples_per_second(self) -> float:
    return self.samples / self.seconds if self.seconds > 0 else float('nan')

  def __add__(self, other: SamplingStats) -> SamplingStats:
    statuses = collections.Counter(self.statuses)
    statuses.update(other.statuses)
    return SamplingStats(
        prompts=self.prompts + other.prompts, samples=self.samples + other.samples,
        prompt_too_long=self.prompt_too_long + other.prompt_too_long,
        padding=self.padding + other.padding, calls=self.calls + other.calls,
        seconds=self.seconds + other.seconds, statuses=dict(sorted(statuses.items())))

  def to_json(self) -> dict[str, Any]:
    return dict(dataclasses.asdict(self), samples_per_second=self.samples_per_second)

  @classmethod
  def from_json(cls, value: Mapping[str, Any]) -> SamplingStats:
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in value.items() if k in fields})


@dataclasses.dataclass(frozen=True)
class Settings:
  """The sampling settings a store's chunks were drawn with (a resumed run must
  use the same, or its samples would mix two distributions)."""

  n: int
  seed: int
  temperature: float
  top_p: float


@dataclasses.dataclass(frozen=True)
class Chunk:
  """The samples of a chunk of prompts.

  Attributes:
    prompt_ids: the chunk's prompts, in the order given.
    samples: N per sampled prompt, ordered by (prompt, index).
    prompt_too_long: {prompt id: why it was not sampled}.
    settings: how they were sampled.
    stats: what it cost.
  """

  prompt_ids: tuple[PromptId, ...]
  samples: tuple[Sample, ...]
  prompt_too_long: Mapping[PromptId, str]
  settings: Settings
  stats: SamplingStats

  def to_json(self) -> dict[str, Any]:
    return {'version': STORE_VERSION, 'prompt_ids': list(self.prompt_ids),
            'settings': dataclasses.asdict(self.settings),
            'prompt_too_long': [[k, v] for k, v in self.prompt_too_long.items()],
            'stats': self.stats.to_json(),
            'samples': [s.to_json() for s in self.samples]}

  @classmethod
  def from_json(cls, value: Mapping[str, Any]) -> Chunk:
    if value.get('version') != STORE_VERSION:
      raise ValueError(f'store line version {value.get("version")!r}; this code reads '
                       f'version {STORE_VERSION}')
    return cls(prompt_ids=tuple(value['prompt_ids']),
               samples=tuple(Sample.from_json(s) for s in value['samples']),
               prompt_too_long={k: v for k, v in value['prompt_too_long']},
               settings=Settings(**value['settings']),
               stats=SamplingStats.from_json(value['stats']))


def sample_chunk(interp: api.Interpreter, prompts: Sequence[str | np.ndarray],
                 prompt_ids: Sequence[PromptId], n: int, seed: int, *,
                 temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 32,
                 logit_bias: dict[int, float] | None = None) -> Chunk:
  """Samples `n` responses for each prompt (text, or token ids).

  The chunk's n * len(prompts) requests run `batch_size` per interpreter call
  (rounded up to a multiple of the mesh's batch shards, `interp.batch_split`),
  ordered by prompt length so a call's prompts share a bucket; the last call is
  padded with dummy requests, which are dropped. Too-long prompts make no
  requests.
  """
  if len(prompts) != len(prompt_ids):
    raise ValueError(f'{len(prompts)} prompts but {len(prompt_ids)} prompt ids')
  if len(set(map(str, prompt_ids))) != len(prompt_ids):
    raise ValueError('prompt ids must be unique (compared as strings)')
  if n < 1 or batch_size < 1:
    raise ValueError(f'n={n}, batch_size={batch_size}: expected ints >= 1')
  ids = [interp.encode_prompts([p])[0] if isinstance(p, str) else np.asarray(p, np.int32)
         for p in prompts]
  too_long = {pid: interp.too_long_detail(len(x)) for pid, x in zip(prompt_ids, ids)
              if len(x) > interp.max_prompt_tokens}
  requests = sorted(((len(x), p, i) for p, x in enumerate(ids)
                     if prompt_ids[p] not in too_long for i in range(n)))
  seeds = [request_seed(seed, prompt_ids[p], i) for _, p, i in requests]
  batch = batch_size + -batch_size % interp.batch_split
  calls = -(-len(requests) // batch)
  start = time.perf_counter()
  results = interp.generate_ids([ids[p] for _, p, _ in requests], temperature=temperature,
                                top_p=top_p, seeds=seeds, batch_size=batch,
                                logit_bias=logit_bias) if requests else []
  seconds = time.perf_counter() - start
  tok = interp.tokenizer
  samples = []
  for (_, p, i), request_seed_, result in zip(requests, seeds, results):
    samples.append(Sample(
        prompt_id=prompt_ids[p], index=i, seed=request_seed_, status=result.status,
        annotated=result.annotated, text=result.text, ids=tuple(result.ids),
        steps=result.steps, tokens=result.total_tokens,
        stripped_tokens=len(tok.encode_text(result.text)) + 1,
        prompt_tokens=result.prompt_tokens, threads=len(result.threads)))
  order = {pid: k for k, pid in enumerate(prompt_ids)}
  samples.sort(key=lambda s: (order[s.prompt_id], s.index))
  stats = SamplingStats(
      prompts=len(prompts), samples=len(samples), prompt_too_long=len(too_long),
      padding=calls * batch - len(requests), calls=calls, seconds=seconds,
      statuses=dict(sorted(collections.Counter(s.status for s in samples).items())))
  return Chunk(prompt_ids=tuple(prompt_ids), samples=tuple(samples), prompt_too_long=too_long,
               settings=Settings(n=n, seed=seed, temperature=float(temperature),
                                 top_p=float(top_p)),
               stats=stats)


class SampleStore:
  """Finished chunks in a JSONL file, one chunk per line.

  Reading ignores a last line without its newline (what a killed append leaves)
  and counts it in `partial_lines`; the next `append` cuts it off first. Any
  other line that does not parse is an error (the file was damaged otherwise).
  With `write=False` (every process but process 0 of a multi-host run, which all
  sample the same chunks) `append` keeps a chunk in memory only.
  """

  def __init__(self, path: str, *, write: bool = True):
    self.path = path
    self.write = write
    self.chunks: list[Chunk] = []
    self.partial_lines = 0
    self._complete_bytes = 0  # the file's length up to its last complete line
    if os.path.exists(path):
      self._read()

  def _read(self) -> None:
    with open(self.path, 'rb') as f:
      data = f.read()
    end = data.rfind(b'\n') + 1
    self._complete_bytes = end
    if end < len(data):
      self.partial_lines = 1
      logging.warning('%s: ignoring a partial last line (%d bytes) left by an '
                      'interrupted append; its chunk will be sampled again',
                      self.path, len(data) - end)
    for number, line in enumerate(data[:end].splitlines(), 1):
      try:
        self.chunks.append(Chunk.from_json(json.loads(line)))
      except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f'{self.path}:{number}: not a sample chunk ({e})') from e

  @property
  def done_ids(self) -> set[PromptId]:
    """The prompts of every finished chunk (too-long ones included)."""
    return {pid for chunk in self.chunks for pid in chunk.prompt_ids}

  @property
  def settings(self) -> Settings | None:
    """The settings of the first chunk (None when the store is empty)."""
    return self.chunks[0].settings if self.chunks else None

  def stats(self) -> SamplingStats:
    """The finished chunks' stats, added up."""
    return sum((c.stats for c in self.chunks), SamplingStats())

  def samples(self) -> dict[PromptId, list[Sample]]:
    """{prompt id: its samples in index order} of every sampled prompt."""
    out: dict[PromptId, list[Sample]] = {}
    for chunk in self.chunks:
      for s in chunk.samples:
        out.setdefault(s.prompt_id, []).append(s)
    return out

  def prompt_too_long(self) -> dict[PromptId, str]:
    """{prompt id: why} of every prompt not sampled for its length."""
    return {k: v for chunk in self.chunks for k, v in chunk.prompt_too_long.items()}

  def append(self, chunk: Chunk) -> None:
    """Adds a finished chunk: one write of one line, flushed and synced."""
    if not self.write:
      self.chunks.append(chunk)
      return
    line = (json.dumps(chunk.to_json(), ensure_ascii=True, separators=(',', ':'))
            + '\n').encode('ascii')
    with open(self.path, 'ab') as f:
      if f.tell() != self._complete_bytes:
        f.truncate(self._complete_bytes)  # a partial line (counted when read)
        f.seek(self._complete_bytes)
      f.write(line)
      f.flush()
      os.fsync(f.fileno())
      self._complete_bytes = f.tell()
    self.chunks.append(chunk)


def _chunks(items: Sequence[int], size: int) -> Iterator[Sequence[int]]:
  for start in range(0, len(items), size):
    yield items[start:start + size]


def sample_prompts(interp: api.Interpreter, prompts: Sequence[str | np.ndarray],
                   prompt_ids: Sequence[PromptId], n: int, seed: int, store: SampleStore, *,
                   chunk_prompts: int = 64, temperature: float = 1.0, top_p: float = 1.0,
                   batch_size: int = 32, logit_bias: dict[int, float] | None = None,
                   log_every: int = 1) -> SamplingStats:
  """Samples every prompt not yet in `store`, `chunk_prompts` per chunk, and
  appends each chunk as it finishes; returns this call's stats.

  Refuses a store whose chunks were sampled with other settings. Chunks are made
  of the prompts still to do, in the given order, so a resumed run's chunks can
  differ from the first run's; the samples do not (see `request_seed`).
  """
  settings = Settings(n=n, seed=seed, temperature=float(temperature), top_p=float(top_p))
  if store.settings is not None and store.settings != settings:
    raise ValueError(f'{store.path} holds samples drawn with {store.settings}, not '
                     f'{settings}; use a new store or the same settings')
  done = {str(p) for p in store.done_ids}
  todo = [k for k, pid in enumerate(prompt_ids) if str(pid) not in done]
  stats = SamplingStats()
  for number, part in enumerate(_chunks(todo, chunk_prompts), 1):
    chunk = sample_chunk(interp, [prompts[k] for k in part], [prompt_ids[k] for k in part],
                         n, seed, temperature=temperature, top_p=top_p,
                         batch_size=batch_size, logit_bias=logit_bias)
    store.append(chunk)
    stats += chunk.stats
    if log_every and number % log_every == 0:
      logging.info('sampled %d / %d prompts (%d too long): %.2f samples/s',
                   stats.prompts, len(todo), stats.prompt_too_long,
                   stats.samples_per_second)
  return stats
