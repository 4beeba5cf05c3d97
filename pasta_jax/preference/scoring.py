"""Stage 2 scoring: each sample's speed and quality, its score, and the pairs.

    scored = rate(store.samples(), records, synthetic_quality, baseline_tokens)
    pairs = make_pairs(scored, lam=4.0)
    summary = summarize(scored, lam=4.0)

Definitions (docs/design.md sections 6 and 7):

- theoretical speedup = baseline tokens / the sample's decode rounds (prefill
  round included), as `comparison.PromptResult.theoretical_speedup`; the
  baseline is the sequential model's answer to the prompt (its tokens, EOS
  included) when known, else the sample's own stripped answer plus EOS
  (`Sample.stripped_tokens`).
- quality: a `QualityFn`, (prompt record, sample) -> [0, 1], or NaN for a sample
  that has none (the judge's verdict was malformed, or the sequential model had no
  answer: `preference.judged`). Such a sample is counted as unrated, left out of the
  score and quality means, and never paired.
- score: `Score(value, tiebreak)`, compared as a tuple. With a finite lambda,
  value = speedup + lambda * quality and tiebreak = 0 (equal values are a tie).
  With lambda = inf, value = quality and tiebreak = speedup: quality alone
  ranks, and speed only orders samples of equal quality. Means and margins are
  taken over `value`.
- pairs: per prompt, chosen = the highest score and rejected = the lowest; among
  equal scores the lowest sample index is taken (for both). A prompt whose
  eligible samples all have equal scores (or that has fewer than two) gives no
  pair.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np

from pasta_jax import comparison
from pasta_jax.data import records
from pasta_jax.data import synthetic
from pasta_jax.preference.sampling import PromptId, Sample

# (prompt record, sample) -> quality in [0, 1]. The record is whatever the caller
# keeps per prompt (e.g. a data source's record with prompt, family and facts).
QualityFn = Callable[[Mapping[str, Any], Sample], float]


def synthetic_quality(record: Mapping[str, Any], sample: Sample) -> float:
  """The synthetic benchmark's exact checker (`synthetic.check`) on the sample's
  final answer; the record needs 'family' and 'facts' (str or bytes)."""
  family = records.decode_text(record['family'])
  if family not in synthetic.FAMILIES:
    raise ValueError(f'family {family!r} has no exact checker; expected one of '
                     f'{sorted(synthetic.FAMILIES)} or another QualityFn')
  return synthetic.check(family, records.decode_text(record['facts']), sample.text)


def theoretical_speedup(sample: Sample, baseline_tokens: int | None = None) -> float:
  """Baseline tokens / the sample's decode rounds (see the module docstring)."""
  tokens = sample.stripped_tokens if baseline_tokens is None else baseline_tokens
  return tokens / max(sample.steps, 1)


class Score(NamedTuple):
  """A sample's score; compared as a tuple (see the module docstring)."""

  value: float
  tiebreak: float


def score(speedup: float, quality: float, lam: float) -> Score:
  """speedup + lam * quality, or with lam = inf quality first, then speed."""
  if not 0.0 <= quality <= 1.0:
    raise ValueError(f'quality={quality!r}: expected a number in [0, 1]')
  if math.isnan(lam) or lam < 0:
    raise ValueError(f'lam={lam!r}: expected a number >= 0 or inf')
  if math.isinf(lam):
    return Score(float(quality), float(speedup))
  return Score(float(speedup + lam * quality), 0.0)


@dataclasses.dataclass(frozen=True)
class Scored:
  """A sample with its quality and theoretical speedup (lambda-free)."""

  sample: Sample
  quality: float  # NaN: none (not rated)
  speedup: float

  @property
  def rated(self) -> bool:
    return not math.isnan(self.quality)

  def score(self, lam: float) -> Score:
    return score(self.speedup, self.quality, lam)


def has_document(sample: Sample) -> bool:
  """Whether a sample is a whole PASTA-LANG document (no stop cut an element),
  so that it can be trained on; `make_pairs`' default eligibility."""
  return sample.annotated is not None


def rate(samples_by_prompt: Mapping[PromptId, Sequence[Sample]],
         prompt_records: Mapping[PromptId, Mapping[str, Any]], quality_fn: QualityFn,
         baseline_tokens: Mapping[PromptId, int] | None = None
         ) -> dict[PromptId, list[Scored]]:
  """Every sample's quality and theoretical speedup, by prompt; a prompt missing
  from `baseline_tokens` (or all, when it is None) uses its samples' own lengths."""
  baseline_tokens = baseline_tokens or {}
  out = {}
  for pid, samples in samples_by_prompt.items():
    baseline = baseline_tokens.get(pid)
    out[pid] = []
    for s in samples:
      quality = float(quality_fn(prompt_records[pid], s))
      if not (0.0 <= quality <= 1.0 or math.isnan(quality)):
        raise ValueError(f'prompt {pid!r} sample {s.index}: quality {quality!r} is not '
                         'in [0, 1] (or NaN: none)')
      out[pid].append(Scored(s, quality, theoretical_speedup(s, baseline)))
  return out


@dataclasses.dataclass(frozen=True)
class Pair:
  """One prompt's preference pair: chosen (y+) over rejected (y-)."""

  prompt_id: PromptId
  chosen: Scored
  rejected: Scored
  chosen_score: Score
  rejected_score: Score

  @property
  def margin(self) -> float:
    """Chosen's score value minus rejected's (0 for a lam = inf pair that only
    speed separates)."""
    return self.chosen_score.value - self.rejected_score.value


def make_pair(prompt_id: PromptId, scored: Sequence[Scored], lam: float, *,
              eligible: Callable[[Sample], bool] = has_document) -> Pair | None:
  """The pair of one prompt's samples, or None (see the module docstring)."""
  pool = sorted((s for s in scored if s.rated and eligible(s.sample)),
                key=lambda s: s.sample.index)
  if len(pool) < 2:
    return None
  keys = [s.score(lam) for s in pool]
  # max/min return the first extreme: the lowest index among equal scores.
  best = max(range(len(pool)), key=keys.__getitem__)
  worst = min(range(len(pool)), key=keys.__getitem__)
  if keys[best] == keys[worst]:
    return None
  return Pair(prompt_id, pool[best], pool[worst], keys[best], keys[worst])


def make_pairs(scored_by_prompt: Mapping[PromptId, Sequence[Scored]], lam: float, *,
               eligible: Callable[[Sample], bool] = has_document) -> list[Pair]:
  """One pair per prompt that has one, in the mapping's order.

  `eligible` picks the samples that may be paired (default: whole documents,
  `has_document`; a sample without a quality never is); `rate`'s output is the
  usual input.
  """
  pairs = []
  for pid, scored in scored_by_prompt.items():
    pair = make_pair(pid, scored, lam, eligible=eligible)
    if pair is not None:
      pairs.append(pair)
  return pairs


@dataclasses.dataclass(frozen=True)
class RoundSummary:
  """A round's scores at one lambda (means over every sample of every prompt).

  Attributes:
    lam: the lambda.
    prompts, samples: what was scored.
    mean_score: mean `Score.value` (quality when lam = inf).
    mean_speedup, geomean_speedup: of the theoretical speedups.
    mean_quality: mean quality in [0, 1].
    pairs: prompts that gave a pair.
    prompts_without_pair: prompts that did not (all scores equal, or fewer than
      two eligible samples).
    mean_margin: mean pair margin in `Score.value` (NaN without pairs).
    mean_speedup_margin: mean chosen minus rejected speedup of the pairs.
    unrated: samples without a quality (NaN), left out of mean_score and
      mean_quality.
  """

  lam: float
  prompts: int
  samples: int
  mean_score: float
  mean_speedup: float
  geomean_speedup: float
  mean_quality: float
  pairs: int
  prompts_without_pair: int
  mean_margin: float
  mean_speedup_margin: float
  unrated: int = 0

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def _mean(values: Sequence[float]) -> float:
  return float(np.mean(values)) if len(values) else float('nan')


def summarize(scored_by_prompt: Mapping[PromptId, Sequence[Scored]], lam: float, *,
              eligible: Callable[[Sample], bool] = has_document) -> RoundSummary:
  """Per-round statistics at `lam` (the pairs as `make_pairs` makes them)."""
  flat = [s for scored in scored_by_prompt.values() for s in scored]
  rated = [s for s in flat if s.rated]
  pairs = make_pairs(scored_by_prompt, lam, eligible=eligible)
  return RoundSummary(
      lam=lam, prompts=len(scored_by_prompt), samples=len(flat),
      mean_score=_mean([s.score(lam).value for s in rated]),
      mean_speedup=_mean([s.speedup for s in flat]),
      geomean_speedup=comparison.geomean([s.speedup for s in flat]),
      mean_quality=_mean([s.quality for s in rated]), pairs=len(pairs),
      prompts_without_pair=len(scored_by_prompt) - len(pairs),
      mean_margin=_mean([p.margin for p in pairs]),
      mean_speedup_margin=_mean([p.chosen.speedup - p.rejected.speedup for p in pairs]),
      unrated=len(flat) - len(rated))
