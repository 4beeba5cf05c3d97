"""The speed/quality Pareto front of a family of models (docs/design.md section 7).

A model is a `Point`: its quality (checker score, %) and its wall-clock speedup
over the sequential model (geometric mean, the evaluation's numbers), plus its
theoretical speedup and per-family quality for the tables.

    points = [pareto.Point.from_summary('sft', summary), ...]
    pareto.front(points)                    # the non-dominated points, by speedup
    pareto.dominates(a, b, quality_gain=1, speedup_gain=0.1)

`a` dominates `b` when it is no worse on both axes and better on one; with
margins, better by at least `quality_gain` points of quality or by a factor of
at least 1 + `speedup_gain` in speedup (the stage-2 target: 1 point or 10%).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Mapping, Sequence


@dataclasses.dataclass(frozen=True)
class Point:
  """One model on the speed/quality plane."""

  name: str
  quality: float
  speedup: float
  theoretical: float = float('nan')
  families: Mapping[str, float] = dataclasses.field(default_factory=dict)

  @classmethod
  def from_summary(cls, name: str, summary: Mapping[str, Mapping[str, Any]]) -> Point:
    """From `comparison.summarize`'s output ('all' and one entry per family)."""
    overall = summary['all']
    return cls(name=name, quality=float(overall['pasta_quality']),
               speedup=float(overall['wallclock_speedup']),
               theoretical=float(overall['theoretical_speedup']),
               families={family: float(s['pasta_quality'])
                         for family, s in summary.items() if family != 'all'})

  @classmethod
  def sequential(cls, summary: Mapping[str, Mapping[str, Any]]) -> Point:
    """The sequential baseline of an evaluation (speedup 1 by definition)."""
    return cls(name='sequential', quality=float(summary['all']['baseline_quality']),
               speedup=1.0, theoretical=1.0,
               families={family: float(s['baseline_quality'])
                         for family, s in summary.items() if family != 'all'})


_SLACK = 1e-9


def _finite(p: Point) -> bool:
  return math.isfinite(p.quality) and math.isfinite(p.speedup)


def dominates(a: Point, b: Point, *, quality_gain: float = 0.0,
              speedup_gain: float = 0.0) -> bool:
  """Whether a is no worse than b on both axes and better on one (by the margins).

  Without margins "better" means strictly greater; `quality_gain` is in quality
  points, `speedup_gain` a relative gain (0.1: at least 10% more speedup).
  """
  if not (_finite(a) and _finite(b)):
    return False
  if a.quality < b.quality or a.speedup < b.speedup:
    return False
  # A margin met exactly counts (_SLACK absorbs rounding: 1.5 * 1.1 > 1.65).
  better_quality = (a.quality >= b.quality + quality_gain - _SLACK if quality_gain > 0
                    else a.quality > b.quality)
  better_speed = (a.speedup >= b.speedup * (1 + speedup_gain) - _SLACK if speedup_gain > 0
                  else a.speedup > b.speedup)
  return better_quality or better_speed


def front(points: Iterable[Point]) -> list[Point]:
  """The points no other point dominates, by increasing speedup (NaNs left out)."""
  points = [p for p in points if _finite(p)]
  kept = [p for p in points if not any(dominates(q, p) for q in points if q is not p)]
  return sorted(kept, key=lambda p: (p.speedup, -p.quality))


def covers(new: Sequence[Point], old: Sequence[Point]) -> bool:
  """Whether the front of `new` is on or beyond the front of `old`: every point
  of old's front is matched or dominated by a point of new."""
  new = [p for p in new if _finite(p)]
  return all(any(q.quality >= p.quality and q.speedup >= p.speedup for q in new)
             for p in front(old))


def speed_order_violations(points_by_lam: Mapping[float, Point]) -> list[tuple[float, float]]:
  """The pairs (lam_small, lam_large) whose models are ordered against lambda:
  the smaller lambda's model is slower. Empty when lambda orders them by speed."""
  lams = sorted(points_by_lam)
  return [(small, large) for i, small in enumerate(lams) for large in lams[i + 1:]
          if points_by_lam[small].speedup < points_by_lam[large].speedup]
