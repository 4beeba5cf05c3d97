"""Pareto dominance with margins, the front, one front covering another, and the
lambda speed order."""

import math

from pasta_jax.preference import pareto


def point(name, quality, speedup, theoretical=math.nan):
  return pareto.Point(name=name, quality=quality, speedup=speedup, theoretical=theoretical)


def test_dominance_needs_no_loss_on_either_axis_and_a_gain_on_one():
  base = point('b', 90.0, 1.5)
  assert pareto.dominates(point('a', 90.5, 1.5), base)
  assert pareto.dominates(point('a', 90.0, 1.6), base)
  assert not pareto.dominates(point('a', 90.0, 1.5), base)  # equal: no gain
  assert not pareto.dominates(point('a', 95.0, 1.49), base)  # slower
  assert not pareto.dominates(point('a', 89.9, 3.0), base)  # worse quality
  assert not pareto.dominates(point('a', math.nan, 3.0), base)


def test_dominance_margins_are_points_of_quality_and_a_relative_speedup():
  base = point('b', 90.0, 1.5)
  margins = {'quality_gain': 1.0, 'speedup_gain': 0.1}
  assert not pareto.dominates(point('a', 90.9, 1.6), base, **margins)  # 0.9 points, 6.7%
  assert pareto.dominates(point('a', 91.0, 1.5), base, **margins)
  assert pareto.dominates(point('a', 90.0, 1.65), base, **margins)  # exactly 10%
  assert not pareto.dominates(point('a', 91.0, 1.49), base, **margins)


def test_front_keeps_the_non_dominated_points_sorted_by_speedup():
  points = [point('seq', 99.0, 1.0), point('sft', 97.0, 1.5), point('bad', 96.0, 1.4),
            point('fast', 90.0, 2.2), point('tie', 97.0, 1.5), point('nan', math.nan, 9.0)]
  names = [p.name for p in pareto.front(points)]
  # 'tie' equals 'sft' (neither dominates the other): both stay.
  assert names[0] == 'seq' and names[-1] == 'fast'
  assert sorted(names[1:3]) == ['sft', 'tie'] and 'bad' not in names and 'nan' not in names


def test_covers_asks_every_point_of_the_old_front_to_be_matched_or_beaten():
  old = [point('a', 95.0, 1.5), point('b', 90.0, 2.0), point('c', 89.0, 1.9)]
  assert pareto.covers([point('x', 95.0, 1.6), point('y', 91.0, 2.0)], old)
  assert pareto.covers(old, old)
  # 'b' (90 at 2.0x) is beyond every new point.
  assert not pareto.covers([point('x', 96.0, 1.6), point('y', 89.0, 2.1)], old)
  # 'c' is dominated in old, so it need not be covered.
  assert pareto.covers([point('x', 95.0, 1.5), point('y', 90.0, 2.0)], old)


def test_speed_order_violations_lists_the_pairs_against_lambda():
  ordered = {1.0: point('1', 90, 2.0), 4.0: point('4', 92, 1.8), math.inf: point('i', 95, 1.5)}
  assert pareto.speed_order_violations(ordered) == []
  swapped = {**ordered, 4.0: point('4', 92, 2.1)}
  assert pareto.speed_order_violations(swapped) == [(1.0, 4.0)]


def test_point_from_an_evaluation_summary():
  summary = {'list_ops': {'pasta_quality': 96.0, 'baseline_quality': 98.0,
                          'wallclock_speedup': 1.4, 'theoretical_speedup': 2.0},
             'all': {'pasta_quality': 97.5, 'baseline_quality': 98.8,
                     'wallclock_speedup': 1.5, 'theoretical_speedup': 2.1}}
  p = pareto.Point.from_summary('m', summary)
  assert (p.quality, p.speedup, p.theoretical, p.families) == (97.5, 1.5, 2.1,
                                                               {'list_ops': 96.0})
  s = pareto.Point.sequential(summary)
  assert (s.quality, s.speedup, s.families) == (98.8, 1.0, {'list_ops': 98.0})
