"""What the stage-2 round driver and its phases share (docs/design.md section 7):
a round's directory, its files and phase markers, and the context of a run.

Process 0 alone writes a round's files; `mark`, which ends every phase, makes
the other processes wait for it, so that each then reads what the phase wrote.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import IO, Any, Mapping

import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from pasta_jax import tokenizer as tokenizer_lib
from pasta_jax.config import ConfigError
from pasta_jax.models.config import TransformerConfig
from pasta_jax.preference import logprobs
from pasta_jax.training import loop

PHASES = ('sampled', 'scored', 'reference', 'trained')
SAMPLES_FILE = 'samples.jsonl'
PAIRS_FILE = 'pairs.jsonl'
SUMMARY_FILE = 'summary.json'
REFERENCE_FILE = 'reference.npz'


def round_dir(workdir: str, r: int) -> str:
  """The run directory of round r (1-based)."""
  return os.path.join(os.path.abspath(os.path.expanduser(workdir)), f'round_{r}')


def round_seed(seed: int, r: int) -> int:
  """The sampling seed of round r (`sampling.request_seed` hashes it further)."""
  return int.from_bytes(hashlib.sha256(f'pasta_jax.rounds/{seed}/{r}'.encode()).digest()[:4],
                        'big')



# -- markers and files -----------------------------------------------------------


def write_atomic(path: str, data: bytes) -> None:
  tmp = f'{path}.tmp'
  with open(tmp, 'wb') as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def read_marker(directory: str, phase: str) -> dict | None:
  """The JSON of `<phase>.done` in a round directory, None if the phase is not done."""
  path = os.path.join(directory, f'{phase}.done')
  if not os.path.exists(path):
    return None
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def mark(directory: str, phase: str, settings: Mapping[str, Any], **info: Any) -> None:
  """Ends a phase: process 0 writes its marker (it alone writes a round's files),
  then every process waits for it, so that all see the phase's files."""
  if jax.process_index() == 0:
    write_atomic(os.path.join(directory, f'{phase}.done'),
                  json.dumps({'settings': dict(settings), **info}, indent=1).encode())
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f'pasta_jax.rounds: {os.path.basename(directory)} '
                                        f'{phase}')


def check_settings(directory: str, phase: str, marker: Mapping[str, Any],
                    settings: Mapping[str, Any]) -> None:
  done = marker['settings']
  diffs = [f'{k}: {done.get(k)!r} then, {v!r} now' for k, v in settings.items()
           if done.get(k) != v]
  if diffs:
    raise ConfigError(f'{directory} was {phase} with other settings ({"; ".join(diffs)}); '
                      'run with the same config, or in a new workdir')


def read_pairs(directory: str) -> list[dict[str, Any]]:
  """The lines of a round's pairs.jsonl."""
  with open(os.path.join(directory, PAIRS_FILE), encoding='utf-8') as f:
    return [json.loads(line) for line in f]


def read_reference(directory: str) -> dict[str, np.ndarray]:
  """A round's reference log-probs ({key: [pairs] float32}, `logprobs.PAIR_KEYS`)."""
  with np.load(os.path.join(directory, REFERENCE_FILE)) as data:
    return {k: data[k] for k in logprobs.PAIR_KEYS}


# -- the context of a run ---------------------------------------------------------


@dataclasses.dataclass
class Context:
  """What every round shares."""

  config: ml_collections.ConfigDict  # the rounds' effective config
  workdir: str
  tok: tokenizer_lib.Tokenizer
  model_config: TransformerConfig
  mesh: jax.sharding.Mesh
  rules: list
  prompts: list[str]
  records: dict[int, Mapping[str, Any]]
  primary: bool
  stream: IO[str] | None
  init: tuple[str, int]  # init.run's directory and checkpoint step
  stop: loop.StopRequest | None = None

  def message(self, text: str) -> None:
    if self.primary:
      print(text, file=self.stream, flush=True)

