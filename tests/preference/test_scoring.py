"""Stage 2 scoring: speedups, scores, lambda = inf, pairs and their ties, summaries."""

import dataclasses
import math

import pytest

from pasta_jax.data import synthetic
from pasta_jax.preference import scoring
from pasta_jax.preference.sampling import Sample

INF = float('inf')


def make_sample(index=0, *, steps=10, stripped_tokens=15, text='', annotated='x',
                prompt_id='p'):
  return Sample(prompt_id=prompt_id, index=index, seed=index, status='done',
                annotated=annotated, text=text, ids=(), steps=steps, tokens=steps,
                stripped_tokens=stripped_tokens, prompt_tokens=3, threads=1)


def scored(quality, speedup, index, **kwargs):
  return scoring.Scored(make_sample(index, **kwargs), quality, speedup)


def test_theoretical_speedup_is_baseline_tokens_over_rounds():
  sample = make_sample(steps=10, stripped_tokens=15)
  assert scoring.theoretical_speedup(sample) == 1.5  # its own stripped length
  assert scoring.theoretical_speedup(sample, baseline_tokens=20) == 2.0
  assert scoring.theoretical_speedup(make_sample(steps=0, stripped_tokens=4)) == 4.0


def test_score_values():
  assert scoring.score(1.5, 0.5, 2.0) == (2.5, 0.0)
  assert scoring.score(1.5, 0.5, 0.0) == (1.5, 0.0)
  assert scoring.score(1.5, 0.25, INF) == (0.25, 1.5)
  assert scoring.score(1.5, 0.25, INF).value == 0.25
  # lam = inf: any quality gain beats any speed gain; speed orders equal quality.
  assert scoring.score(0.1, 0.5, INF) > scoring.score(100.0, 0.25, INF)
  assert scoring.score(2.0, 0.5, INF) > scoring.score(1.0, 0.5, INF)
  # Finite lam: speed can outweigh quality.
  assert scoring.score(4.0, 0.0, 2.0) > scoring.score(1.0, 1.0, 2.0)


@pytest.mark.parametrize('quality,lam', [(1.5, 1.0), (-0.1, 1.0), (math.nan, 1.0),
                                         (0.5, -1.0), (0.5, math.nan)])
def test_score_refuses_values_out_of_range(quality, lam):
  with pytest.raises(ValueError):
    scoring.score(1.0, quality, lam)


# (quality, speedup) of samples 0..3; by hand:
#   lam = 1:   2.0, 3.0, 3.0, 1.5 -> best 1 (ties 2: lower index), worst 3
#   lam = 0:   1.0, 2.0, 3.0, 1.0 -> best 2, worst 0 (ties 3: lower index)
#   lam = inf: (1, 1), (1, 2), (0, 3), (0.5, 1) -> best 1, worst 2
SAMPLES = [(1.0, 1.0), (1.0, 2.0), (0.0, 3.0), (0.5, 1.0)]


@pytest.mark.parametrize('lam,best,worst,margin', [(1.0, 1, 3, 1.5), (0.0, 2, 0, 2.0),
                                                   (INF, 1, 2, 1.0)])
def test_pairs_best_against_worst_lowest_index_on_ties(lam, best, worst, margin):
  pool = [scored(q, s, i) for i, (q, s) in enumerate(SAMPLES)]
  for order in (pool, pool[::-1]):  # the input order does not matter
    pair = scoring.make_pair('p', order, lam)
    assert (pair.chosen.sample.index, pair.rejected.sample.index) == (best, worst)
    assert pair.margin == margin
    assert pair.chosen_score == pool[best].score(lam)


def test_no_pair_when_all_scores_are_equal():
  same = [scored(0.5, 1.0, i) for i in range(3)]
  assert scoring.make_pair('p', same, 1.0) is None
  assert scoring.make_pair('p', same, INF) is None
  # Different (quality, speed) with the same finite score: still a tie.
  assert scoring.make_pair('p', [scored(1.0, 1.0, 0), scored(0.0, 2.0, 1)], 1.0) is None
  # ... which lam = inf breaks by quality, and equal quality by speed (margin 0).
  pair = scoring.make_pair('p', [scored(0.5, 1.0, 0), scored(0.5, 2.0, 1)], INF)
  assert (pair.chosen.sample.index, pair.rejected.sample.index, pair.margin) == (1, 0, 0.0)
  assert scoring.make_pair('p', [scored(0.5, 1.0, 0)], 1.0) is None  # one sample


def test_only_eligible_samples_are_paired():
  pool = [scored(1.0, 1.0, 0), scored(0.0, 1.0, 1, annotated=None), scored(0.5, 1.0, 2)]
  pair = scoring.make_pair('p', pool, 1.0)
  assert (pair.chosen.sample.index, pair.rejected.sample.index) == (0, 2)
  pair = scoring.make_pair('p', pool, 1.0, eligible=lambda s: True)
  assert pair.rejected.sample.index == 1


def test_synthetic_quality_is_the_exact_checker():
  example = next(synthetic.generate('validation', 1))
  record = {'prompt': example.prompt, 'family': example.family.encode(),
            'facts': example.facts.encode()}
  assert scoring.synthetic_quality(record, make_sample(text=example.plain)) == 1.0
  assert scoring.synthetic_quality(record, make_sample(text='')) == 0.0
  with pytest.raises(ValueError, match='no exact checker'):
    scoring.synthetic_quality({'family': 'chat', 'facts': '{}'}, make_sample())


def test_rate_pairs_and_summary_by_hand():
  samples = {
      'a': [make_sample(0, steps=10, prompt_id='a', text='good'),
            make_sample(1, steps=5, prompt_id='a', text='bad')],
      'b': [make_sample(0, steps=4, stripped_tokens=8, prompt_id='b', text='good'),
            make_sample(1, steps=4, stripped_tokens=8, prompt_id='b', text='good')],
  }
  records = {'a': {}, 'b': {}}
  quality = lambda record, sample: float(sample.text == 'good')
  rated = scoring.rate(samples, records, quality, baseline_tokens={'a': 20})
  # 'a' uses the sequential baseline (20 tokens), 'b' its samples' own lengths.
  assert [(s.quality, s.speedup) for s in rated['a']] == [(1.0, 2.0), (0.0, 4.0)]
  assert [(s.quality, s.speedup) for s in rated['b']] == [(1.0, 2.0), (1.0, 2.0)]
  # lam = 4: 'a' scores 6 and 4 (a pair, margin 2); 'b' scores 6 and 6 (no pair).
  pairs = scoring.make_pairs(rated, 4.0)
  assert [(p.prompt_id, p.chosen.sample.index, p.margin) for p in pairs] == [('a', 0, 2.0)]
  summary = scoring.summarize(rated, 4.0)
  assert (summary.prompts, summary.samples, summary.pairs,
          summary.prompts_without_pair) == (2, 4, 1, 1)
  assert summary.mean_score == (6 + 4 + 6 + 6) / 4
  assert summary.mean_speedup == 2.5
  assert summary.geomean_speedup == pytest.approx((2 * 4 * 2 * 2) ** 0.25)
  assert summary.mean_quality == 0.75
  assert (summary.mean_margin, summary.mean_speedup_margin) == (2.0, -2.0)
  # lam = 1: 'a' scores 3 and 4: the faster wrong answer wins.
  assert scoring.make_pairs(rated, 1.0)[0].chosen.sample.index == 1
  inf = scoring.summarize(rated, INF)
  assert (inf.mean_score, inf.pairs, inf.mean_margin) == (0.75, 1, 1.0)
  with pytest.raises(ValueError, match='not in'):
    scoring.rate(samples, records, lambda record, sample: 2.0)


def test_samples_without_a_quality_are_counted_and_never_paired():
  # The judge left samples 1 and 3 without a quality (NaN); lam = 1 by hand over the
  # others: 0 -> 2.0, 2 -> 3.0, 4 -> 0.5 + 2.0 = 2.5.
  samples = [make_sample(i) for i in range(5)]
  qualities = {0: 1.0, 1: math.nan, 2: 0.0, 3: math.nan, 4: 0.5}
  speedups = {0: 1.0, 1: 9.0, 2: 3.0, 3: 0.1, 4: 2.0}
  rated = scoring.rate({'p': samples}, {'p': {}}, lambda r, s: qualities[s.index])
  assert [s.rated for s in rated['p']] == [True, False, True, False, True]
  rated = {'p': [dataclasses.replace(s, speedup=speedups[s.sample.index]) for s in rated['p']]}
  pair = scoring.make_pair('p', rated['p'], 1.0)
  assert (pair.chosen.sample.index, pair.rejected.sample.index) == (2, 0)
  summary = scoring.summarize(rated, 1.0)
  assert summary.unrated == 2 and summary.samples == 5
  assert summary.mean_quality == pytest.approx(0.5)
  assert summary.mean_score == pytest.approx(2.5)
  assert summary.mean_speedup == pytest.approx(sum(speedups.values()) / 5)
  with pytest.raises(ValueError, match='not in \\[0, 1\\] \\(or NaN: none\\)'):
    scoring.rate({'p': samples}, {'p': {}}, lambda r, s: 1.5)
  assert scoring.make_pair('p', [rated['p'][1], rated['p'][3]], 1.0) is None
