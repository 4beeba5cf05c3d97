"""PASTA runs against their sequential baseline: per-prompt rows, summaries, tables, plots.

For every test prompt both models decode (batch 1, greedy, compile time excluded)
through the interpreter; per prompt we keep the quality (the family's checker),
the tokens, the PASTA rounds, the theoretical speedup (baseline tokens / PASTA
rounds), the parallelism (PASTA tokens / rounds), the wall-clock speedup
(baseline decode time / PASTA decode time, docs/design.md section 6: the rounds after
the prefill, which is timed apart) and the end-to-end speedup (prefill and decode
together). Per family and overall: mean quality (points out of 100), geometric
means of the speedups, and realised / theoretical (wall-clock / theoretical).

A prompt longer than an interpreter takes is not decoded by it: its row has that
model's status 'prompt_too_long' (and a `detail` saying what would fit), its
speedups are NaN, and the summaries count it apart ('prompt_too_long') from the
prompts their means are taken over ('decoded'); the other prompts decode as
without it.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import statistics
from typing import Any, Mapping, Sequence

import numpy as np
from tqdm import auto as tqdm_auto

from pasta_jax import judging
from pasta_jax.data import encoding
from pasta_jax.data import records
from pasta_jax.data import synthetic
from pasta_jax.interpreter import results as results_lib
from pasta_jax.settings import Mode


@dataclasses.dataclass
class PromptResult:
  """One prompt decoded by both models."""

  prompt: str
  family: str
  baseline_text: str
  baseline_quality: float
  baseline_tokens: int
  baseline_decode_seconds: float
  baseline_prefill_seconds: float
  pasta_text: str
  pasta_annotated: str | None
  pasta_quality: float
  pasta_tokens: int
  pasta_steps: int
  pasta_decode_seconds: float
  pasta_prefill_seconds: float
  pasta_status: str
  baseline_status: str
  timeline: list = dataclasses.field(default_factory=list)
  detail: str = ''  # why the prompt was not decoded ('' when it was)
  # The LLM judge's PASTA answer against the sequential one (`judge_rows`), if asked.
  judge: judging.Judgement | None = None

  @property
  def decoded(self) -> bool:
    """Whether both models decoded the prompt (neither found it too long)."""
    return results_lib.PROMPT_TOO_LONG not in (self.pasta_status, self.baseline_status)

  @property
  def theoretical_speedup(self) -> float:
    if not self.decoded:
      return float('nan')
    return self.baseline_tokens / max(self.pasta_steps, 1)

  @property
  def wallclock_speedup(self) -> float:
    """Decode time of the baseline / of PASTA (the prefill excluded)."""
    if not self.decoded:
      return float('nan')
    return self.baseline_decode_seconds / self.pasta_decode_seconds

  @property
  def end_to_end_speedup(self) -> float:
    """The same with the prefill included."""
    if not self.decoded:
      return float('nan')
    return ((self.baseline_prefill_seconds + self.baseline_decode_seconds)
            / (self.pasta_prefill_seconds + self.pasta_decode_seconds))

  @property
  def parallelism(self) -> float:
    if not self.decoded:
      return float('nan')
    return self.pasta_tokens / max(self.pasta_steps, 1)


def geomean(values: Sequence[float]) -> float:
  """The geometric mean of the positive values; NaN when there are none."""
  values = [v for v in values if v > 0]
  return statistics.geometric_mean(values) if values else float('nan')


def _mean(values: Sequence[float]) -> float:
  return float(np.mean(values)) if len(values) else float('nan')


def summarize(rows: Sequence[PromptResult]) -> dict[str, dict[str, float]]:
  """Per family and overall ('all') aggregates over the decoded prompts; 'prompts'
  counts every prompt, 'prompt_too_long' those neither model decoded."""
  groups = collections.defaultdict(list)
  groups['all'] = []
  for row in rows:
    groups[row.family].append(row)
    groups['all'].append(row)
  out = {}
  for name, rows_of_group in sorted(groups.items(), key=lambda kv: (kv[0] == 'all', kv[0])):
    group = [r for r in rows_of_group if r.decoded]
    theoretical = geomean([r.theoretical_speedup for r in group])
    wallclock = geomean([r.wallclock_speedup for r in group])
    out[name] = {
        'prompts': len(rows_of_group),
        'decoded': len(group),
        'prompt_too_long': len(rows_of_group) - len(group),
        'baseline_quality': 100 * _mean([r.baseline_quality for r in group]),
        'pasta_quality': 100 * _mean([r.pasta_quality for r in group]),
        'baseline_tokens': _mean([r.baseline_tokens for r in group]),
        'pasta_tokens': _mean([r.pasta_tokens for r in group]),
        'pasta_steps': _mean([r.pasta_steps for r in group]),
        'theoretical_speedup': theoretical,
        'wallclock_speedup': wallclock,
        'end_to_end_speedup': geomean([r.end_to_end_speedup for r in group]),
        'realised_over_theoretical': wallclock / theoretical,
        'parallelism': geomean([r.parallelism for r in group]),
    }
    if any(r.judge is not None for r in rows):
      judged = judging.summarize([r.judge for r in group if r.judge is not None])['all']
      out[name].update({f'judge_{k}': judged[k] for k in (
          'win_rate', *judging.OUTCOMES, 'agreement', 'from_logprobs')})
  return out


def judge_rows(judge: judging.Judge, rows_by_run: Mapping[str, Sequence[PromptResult]], *,
               concurrency: int = 8, progress: bool = False) -> list[judging.Judgement]:
  """Judges every decoded row's PASTA answer against its sequential answer (both
  orders, `judging`) and keeps the judgement in `row.judge`; `summarize` then
  reports the win rates. Raises `ServiceError` when the judge refuses the requests."""
  todo = [row for rows in rows_by_run.values() for row in rows if row.decoded]
  judgements = judging.judge_all(judge, [(r.prompt, r.pasta_text, r.baseline_text)
                                         for r in todo],
                                 concurrency=concurrency, progress=progress)
  for row, judgement in zip(todo, judgements):
    row.judge = judgement
  return judgements


def _judge_cell(s: Mapping[str, float]) -> str:
  """The judge's win rate of PASTA, with the pairs that got none: '62.5 (1 invalid)'."""
  rate = 'n/a' if s['judge_win_rate'] != s['judge_win_rate'] else f'{s["judge_win_rate"]:.1f}'
  missing = ', '.join(f'{s[f"judge_{k}"]} {k}' for k in (judging.INVALID, judging.FAILED)
                      if s[f'judge_{k}'])
  return f'{rate} ({missing})' if missing else rate


def markdown_table(summary: dict[str, dict[str, float]]) -> str:
  """One row per family and 'all'; with a judge, its win rate of PASTA over the
  sequential answers after the exact checkers' quality."""
  judged = 'judge_win_rate' in summary['all']
  lines = ['| family | prompts | quality: sequential | quality: PASTA | '
           + ('judge: PASTA win rate | ' if judged else '') + 'tokens: seq / PASTA '
           '| PASTA rounds | theoretical speedup | wall-clock speedup | realised / theoretical '
           '| end-to-end speedup | parallelism |', '|' + '---|' * (11 + judged)]
  for name, s in summary.items():
    lines.append(
        f'| {name} | {_prompts_cell(s)} | {s["baseline_quality"]:.1f} | '
        f'{s["pasta_quality"]:.1f} | ' + (f'{_judge_cell(s)} | ' if judged else '') +
        f'{s["baseline_tokens"]:.1f} / {s["pasta_tokens"]:.1f} | {s["pasta_steps"]:.1f} | '
        f'{s["theoretical_speedup"]:.2f}x | {s["wallclock_speedup"]:.2f}x | '
        f'{s["realised_over_theoretical"]:.2f} | {s["end_to_end_speedup"]:.2f}x | '
        f'{s["parallelism"]:.2f} |')
  return '\n'.join(lines)


def _prompts_cell(s: Mapping[str, float]) -> str:
  """'4', or '4 (1 too long)' when some were not decoded."""
  skipped = s.get('prompt_too_long', 0)
  return f'{s["prompts"]} ({skipped} too long)' if skipped else f'{s["prompts"]}'


def _check(family: str, facts: str, text: str) -> float:
  if family in synthetic.FAMILIES:
    return synthetic.check(family, facts, text)
  return float('nan')  # no exact checker: quality comes from an external judge


def evaluate(pasta, baseline, source, *, num_prompts: int | None = None,
             progress: bool = False) -> list[PromptResult]:
  """Decodes the source's prompts with both interpreters (batch 1, greedy).

  Args:
    pasta, baseline: `interpreter.Interpreter`s (the baseline in sequential mode).
    source: random-access records with prompt, family and facts.
    num_prompts: the first N records (None: all; else >= 1).
    progress: whether to show a tqdm bar of the prompts done (on stderr).

  A prompt longer than either interpreter takes gets a 'prompt_too_long' row
  (see the module docstring); the others decode as they would without it.
  """
  return evaluate_many({'pasta': pasta}, baseline, source, num_prompts=num_prompts,
                       progress=progress)['pasta']


def evaluate_many(pastas: Mapping[str, Any], baseline, source, *,
                  num_prompts: int | None = None, progress: bool = False
                  ) -> dict[str, list[PromptResult]]:
  """`evaluate` for several PASTA interpreters (e.g. one per position strategy).

  The baseline decodes each prompt once; every PASTA interpreter decodes it right
  after, so all timings of a prompt are taken side by side.
  """
  if num_prompts is not None and num_prompts < 1:
    raise ValueError(f'num_prompts={num_prompts}: expected an int >= 1 (None: all)')
  total = len(source) if num_prompts is None else min(num_prompts, len(source))
  warmed: set[tuple[int, int]] = set()
  rows: dict[str, list[PromptResult]] = {name: [] for name in pastas}

  def timed(interp, prompt):
    ids = encoding.encode_prompt(prompt, interp.tokenizer, interp.template)
    if len(ids) <= interp.max_prompt_tokens:
      key = (id(interp), interp.bucket(len(ids)))
      if key not in warmed:  # compile this bucket outside the timing
        interp.generate_timed(ids)
        warmed.add(key)
    return interp.generate_timed(ids)

  def quality(result, family, facts):
    if result.status == results_lib.PROMPT_TOO_LONG:
      return float('nan')
    return _check(family, facts, result.text)

  for i in tqdm_auto.trange(total, desc='evaluating', unit='prompt', disable=not progress):
    record = source[i]
    prompt = records.decode_text(record['prompt'])
    family = records.decode_text(record['family'])
    facts = records.decode_text(record['facts'])
    base, base_t = timed(baseline, prompt)
    for name, pasta in pastas.items():
      result, pasta_t = timed(pasta, prompt)
      rows[name].append(PromptResult(
          prompt=prompt, family=family, baseline_text=base.text,
          baseline_quality=quality(base, family, facts),
          baseline_tokens=base.total_tokens, baseline_decode_seconds=base_t.decode_seconds,
          baseline_prefill_seconds=base_t.prefill_seconds,
          pasta_text=result.text, pasta_annotated=result.annotated,
          pasta_quality=quality(result, family, facts), pasta_tokens=result.total_tokens,
          pasta_steps=result.steps, pasta_decode_seconds=pasta_t.decode_seconds,
          pasta_prefill_seconds=pasta_t.prefill_seconds, pasta_status=result.status,
          baseline_status=base.status, timeline=[list(t) for t in result.timeline],
          detail='; '.join(f'{who}: {r.detail}' for who, r in (('PASTA', result),
                                                                ('sequential', base))
                           if r.detail)))
  return rows


def comparison_table(summaries: Mapping[str, dict], settings: Mapping[str, str]) -> str:
  """One row per PASTA run (overall numbers): the ablation view."""
  judged = all('judge_win_rate' in summary['all'] for summary in summaries.values())
  lines = ['| run | setting | quality: sequential | quality: PASTA | '
           + ('judge: PASTA win rate | ' if judged else '') + 'theoretical speedup '
           '| wall-clock speedup | realised / theoretical | end-to-end speedup | parallelism |',
           '|' + '---|' * (9 + judged)]
  for name, summary in summaries.items():
    s = summary['all']
    lines.append(
        f'| {name} | {settings.get(name, "")} | {s["baseline_quality"]:.1f} | '
        f'{s["pasta_quality"]:.1f} | ' + (f'{_judge_cell(s)} | ' if judged else '') +
        f'{s["theoretical_speedup"]:.2f}x | '
        f'{s["wallclock_speedup"]:.2f}x | {s["realised_over_theoretical"]:.2f} | '
        f'{s["end_to_end_speedup"]:.2f}x | {s["parallelism"]:.2f} |')
  return '\n'.join(lines)


def pareto_plot(summaries: Mapping[str, dict], path: str) -> str:
  """Quality against wall-clock speedup, one point per PASTA run, plus the baseline."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 4.5))
  first = next(iter(summaries.values()))['all']
  ax.scatter([1.0], [first['baseline_quality']], s=80, marker='s', label='sequential')
  for name, summary in summaries.items():
    s = summary['all']
    ax.scatter([s['wallclock_speedup']], [s['pasta_quality']], s=80, label=name)
    ax.annotate(f'{s["theoretical_speedup"]:.2f}x theoretical',
                (s['wallclock_speedup'], s['pasta_quality']), fontsize=7,
                xytext=(4, -10), textcoords='offset points')
  ax.set_xlabel('wall-clock speedup over the sequential model (geometric mean)')
  ax.set_ylabel('quality (checker score, %)')
  ax.set_title('Quality against speedup, one point per run')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def alpaca_eval_outputs(rows: Sequence[PromptResult], generator: str, *,
                        baseline: bool = False) -> list[dict[str, str]]:
  """AlpacaEval's model-outputs format: [{instruction, output, generator}]."""
  return [{'instruction': r.prompt, 'output': r.baseline_text if baseline else r.pasta_text,
           'generator': generator} for r in rows]


def write_outputs(rows: Sequence[PromptResult], summary: dict, out_dir: str, *,
                  names: tuple[str, str] = ('pasta', 'sequential')) -> dict[str, str]:
  """JSON results, AlpacaEval outputs, the Markdown table and the plots."""
  os.makedirs(out_dir, exist_ok=True)
  paths = {}
  paths['results'] = os.path.join(out_dir, 'results.json')
  with open(paths['results'], 'w', encoding='utf-8') as f:
    json.dump({'summary': summary,
               'prompts': [dict(dataclasses.asdict(r),
                                judge=r.judge.to_json() if r.judge is not None else None,
                                theoretical_speedup=r.theoretical_speedup,
                                wallclock_speedup=r.wallclock_speedup,
                                end_to_end_speedup=r.end_to_end_speedup,
                                parallelism=r.parallelism) for r in rows]}, f, indent=1)
  for name, is_baseline in ((names[0], False), (names[1], True)):
    path = os.path.join(out_dir, f'alpaca_eval_{name}.json')
    with open(path, 'w', encoding='utf-8') as f:
      json.dump(alpaca_eval_outputs(rows, name, baseline=is_baseline), f, indent=1)
    paths[f'alpaca_eval_{name}'] = path
  paths['table'] = os.path.join(out_dir, 'table.md')
  with open(paths['table'], 'w', encoding='utf-8') as f:
    f.write(markdown_table(summary) + '\n')
  if any(r.decoded for r in rows):
    paths.update(plots([r for r in rows if r.decoded], summary, out_dir))
  return paths


def plots(rows: Sequence[PromptResult], summary: dict, out_dir: str) -> dict[str, str]:
  """PNG plots: the Pareto view, the speedup distribution, one thread timeline
  (of decoded rows)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  paths = {}

  fig, ax = plt.subplots(figsize=(6, 4.5))
  overall = summary['all']
  ax.scatter([1.0], [overall['baseline_quality']], s=80, marker='s', label='sequential')
  ax.scatter([overall['wallclock_speedup']], [overall['pasta_quality']], s=80, marker='o',
             label='PASTA (wall-clock)')
  ax.scatter([overall['theoretical_speedup']], [overall['pasta_quality']], s=80,
             marker='^', label='PASTA (theoretical)')
  for name, s in summary.items():
    if name != 'all':
      ax.scatter([s['wallclock_speedup']], [s['pasta_quality']], s=25, alpha=0.6)
      ax.annotate(name, (s['wallclock_speedup'], s['pasta_quality']), fontsize=7,
                  xytext=(3, 3), textcoords='offset points')
  ax.set_xlabel('speedup over the sequential model (geometric mean)')
  ax.set_ylabel('quality (checker score, %)')
  ax.set_title('Quality against speedup')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  paths['pareto'] = os.path.join(out_dir, 'pareto.png')
  fig.tight_layout()
  fig.savefig(paths['pareto'], dpi=120)
  plt.close(fig)

  fig, ax = plt.subplots(figsize=(6, 4))
  bins = np.linspace(0, max(4.5, max(r.theoretical_speedup for r in rows) + 0.25), 37)
  ax.hist([r.wallclock_speedup for r in rows], bins=bins, alpha=0.6, label='wall-clock')
  ax.hist([r.theoretical_speedup for r in rows], bins=bins, alpha=0.6, label='theoretical')
  ax.axvline(1.0, color='k', lw=0.8)
  ax.set_xlabel('per-prompt speedup over the sequential model')
  ax.set_ylabel('prompts')
  ax.set_title('Speedup distribution')
  ax.legend()
  paths['speedups'] = os.path.join(out_dir, 'speedups.png')
  fig.tight_layout()
  fig.savefig(paths['speedups'], dpi=120)
  plt.close(fig)

  row = max(rows, key=lambda r: (r.pasta_status == 'done', r.parallelism))
  fig, ax = plt.subplots(figsize=(8, 3.2))
  timeline = np.asarray(row.timeline).reshape(-1, 3)
  threads = timeline[:, 1]
  ax.scatter(timeline[:, 0], threads, c=threads, cmap='tab10', marker='|', s=120)
  ax.set_xlabel('decode round')
  ax.set_ylabel('thread (0 = main)')
  ax.set_yticks(range(int(threads.max()) + 1))
  ax.set_title(f'Which thread wrote each token: {row.prompt[:60]!r}', fontsize=9)
  ax.grid(alpha=0.3)
  paths['timeline'] = os.path.join(out_dir, 'timeline.png')
  fig.tight_layout()
  fig.savefig(paths['timeline'], dpi=120)
  plt.close(fig)
  return paths


def load_pair(pasta_workdir: str, baseline_workdir: str, **overrides) -> tuple[Any, Any, Any]:
  """Interpreters for a PASTA run and its sequential baseline run, and the PASTA run."""
  pastas, baseline, runs = load_runs([pasta_workdir], baseline_workdir, **overrides)
  return pastas[0], baseline, runs[0]


def load_runs(pasta_workdirs: Sequence[str], baseline_workdir: str, **overrides
              ) -> tuple[list[Any], Any, list[Any]]:
  """Interpreters for PASTA runs and their sequential baseline, and the PASTA runs."""
  from pasta_jax.interpreter import Interpreter  # pylint: disable=g-import-not-at-top
  from pasta_jax.runs import load_run  # pylint: disable=g-import-not-at-top
  pasta_runs = [load_run(workdir) for workdir in pasta_workdirs]
  base_run = load_run(baseline_workdir)
  for workdir, run in zip(pasta_workdirs, pasta_runs):
    if run.mode is not Mode.PASTA:
      raise ValueError(f'{workdir} was trained in mode {run.mode.value!r}; '
                       'expected a PASTA run')
  if base_run.mode is not Mode.SEQUENTIAL:
    raise ValueError(f'{baseline_workdir} was trained in mode '
                     f'{base_run.mode.value!r}; expected a sequential run')
  pastas = [Interpreter.from_run(run, **overrides) for run in pasta_runs]
  baseline = Interpreter.from_run(base_run, **{k: v for k, v in overrides.items()
                                               if k not in ('slots', 'max_threads',
                                                            'round_widths')})
  return pastas, baseline, pasta_runs


def position_setting(run, interp) -> str:
  """How a run places positions: in training, and in the interpreter."""
  return f'trained {run.position_strategy}, decoded {interp.config.position_strategy}'
