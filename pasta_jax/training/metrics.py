"""What a run shows and records: a tqdm progress bar, TensorBoard events, metrics.jsonl.

Only process 0 writes (the others get disabled writers). The progress bar is
redrawn in place on a terminal (a widget in a notebook); when its stream is not a
terminal (a log file, CI) it prints a plain line at every logging step instead.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import IO, Mapping

from absl import logging
from tqdm import auto as tqdm_auto
from tqdm import autonotebook
from tqdm import std as tqdm_std


class MetricWriter:
  """Scalars to TensorBoard event files (tensorboardX) and to `metrics.jsonl`.

  Each jsonl line is `{"step": N, "split": "train" | "eval", "time": unix, ...}`;
  TensorBoard tags are `split/name`. A run resumed from the checkpoint of step
  `resume_step` starts by dropping what a killed process wrote after that step
  (the resumed run writes those steps again), in both; a (step, split) written
  again replaces the old line, so every (step, split) appears once.
  """

  def __init__(self, workdir: str, *, enabled: bool = True, tensorboard: bool = True,
               resume_step: int | None = None):
    self.enabled = enabled
    self._tb = None
    self._jsonl: IO[str] | None = None
    self._written: set[tuple[int, str]] = set()
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._path = os.path.join(workdir, 'metrics.jsonl')
    records = read_metrics(self._path)
    if resume_step is None and records:
      # A fresh run in a directory with the metrics of another: keep them aside.
      aside = f'{self._path}.{int(time.time())}'
      os.replace(self._path, aside)
      logging.warning('%s holds the metrics of an earlier run without checkpoints; moved '
                      'to %s', self._path, aside)
      records = []
    self._rewrite([r for r in records if r['step'] <= (resume_step or 0)])
    if tensorboard:
      import tensorboardX  # pylint: disable=g-import-not-at-top
      # Events of steps after the checkpoint are purged from what TensorBoard shows.
      self._tb = tensorboardX.SummaryWriter(
          logdir=workdir, flush_secs=30,
          purge_step=None if resume_step is None else resume_step + 1)

  def _rewrite(self, records: list[dict]) -> None:
    """Replaces metrics.jsonl by `records` (atomically) and appends from there."""
    if self._jsonl is not None:
      self._jsonl.close()
    tmp = self._path + '.tmp'
    with open(tmp, 'w', encoding='utf-8') as f:
      f.writelines(json.dumps(r) + '\n' for r in records)
    os.replace(tmp, self._path)
    self._written = {(r['step'], r['split']) for r in records}
    self._jsonl = open(self._path, 'a', encoding='utf-8')

  def write(self, step: int, split: str, scalars: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    clean = {k: float(v) for k, v in scalars.items()}
    record = {'step': int(step), 'split': split, 'time': round(time.time(), 3), **clean}
    if (record['step'], split) in self._written:
      self._rewrite([r for r in read_metrics(self._path)
                     if (r['step'], r['split']) != (record['step'], split)])
    self._jsonl.write(json.dumps(record) + '\n')
    self._jsonl.flush()
    self._written.add((record['step'], split))
    if self._tb is not None:
      for name, value in clean.items():
        self._tb.add_scalar(f'{split}/{name}', value, int(step))

  def write_text(self, step: int, tag: str, text: str) -> None:
    if self.enabled and self._tb is not None:
      self._tb.add_text(tag, text, int(step))

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None


def read_metrics(path: str) -> list[dict]:
  """The records of a metrics.jsonl ([] if there is none).

  Lines that do not parse (the last one when a process was killed mid-write) are
  left out with a warning that counts them.
  """
  if not os.path.exists(path):
    return []
  records, bad = [], []
  with open(path, encoding='utf-8', errors='replace') as f:
    for number, line in enumerate(f, 1):
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        bad.append(number)
  if bad:
    logging.warning('%s: left out %d line(s) that do not parse (line %s)', path, len(bad),
                    ', '.join(map(str, bad[:5])) + (' ...' if len(bad) > 5 else ''))
  return records


_BAR_FORMAT = 'step {n_fmt}/{total_fmt} [{bar}]{postfix} | {elapsed} elapsed, ETA {remaining}'


class ProgressBar:
  """A tqdm bar of the run: step, loss, accuracy, tokens/s, elapsed time and ETA.

  `step 120/2000 [#1  ], loss 1.2340 | acc 50.0% | 5,120 tok/s | 00:41 elapsed, ETA 10:03`,
  redrawn in place on a terminal and a widget in a notebook. Where
  nothing is redrawn (a log file, CI, captured output) it prints the same line,
  formatted by tqdm, each time `set_metrics` brings new numbers. `update(step)`
  after every step (cheap: no device sync), `set_metrics` when new numbers are
  known, `message` for lines that must stay (eval results) above the bar.
  """

  def __init__(self, total: int, *, initial: int = 0, stream: IO[str] | None = None,
               enabled: bool = True, min_interval: float = 0.2, tty: bool | None = None):
    """Starts the bar at step `initial`.

    Args:
      total: the last step.
      initial: the step the run starts from (a resumed run's), for the ETA.
      stream: where the bar and the messages go; None: the bar on stderr and
        the messages on stdout, as tqdm does.
      enabled: False on the processes other than process 0: nothing shows.
      min_interval: seconds between two redraws.
      tty: whether to redraw in place; None: in a notebook or when the bar's
        stream is a terminal.
    """
    self.enabled = enabled
    self._stream = stream
    if tty is None:
      shown_on = sys.stderr if stream is None else stream
      tty = (autonotebook.tqdm is not tqdm_std.tqdm
             or (hasattr(shown_on, 'isatty') and shown_on.isatty()))
    self._bar = tqdm_auto.tqdm(total=total, initial=initial, file=stream,
                               mininterval=min_interval, bar_format=_BAR_FORMAT,
                               dynamic_ncols=True) if enabled and tty else None
    self._total, self._initial, self._step = total, initial, initial
    self._start = time.time()
    self._metrics: dict[str, float] = {}

  def set_metrics(self, **metrics: float) -> None:
    self._metrics.update(metrics)
    if self._bar is not None:
      self._bar.set_postfix_str(self._metrics_text())
    elif self.enabled:
      line = tqdm_std.tqdm.format_meter(
          self._step, self._total, time.time() - self._start, ascii=True,
          bar_format=_BAR_FORMAT, postfix=self._metrics_text(), initial=self._initial)
      print(line, file=sys.stderr if self._stream is None else self._stream, flush=True)

  def update(self, step: int) -> None:
    self._step = step
    if self._bar is not None:
      self._bar.update(step - self._bar.n)

  def message(self, text: str) -> None:
    """A line that stays above the bar."""
    if self._bar is not None:
      self._bar.write(text, file=self._stream)
    elif self.enabled:
      print(text, file=sys.stdout if self._stream is None else self._stream, flush=True)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()

  def _metrics_text(self) -> str:
    m = self._metrics
    parts = []
    if 'loss' in m:
      parts.append(f'loss {m["loss"]:.4f}')
    if 'accuracy' in m:
      parts.append(f'acc {100 * m["accuracy"]:.1f}%')
    if 'tokens_per_s' in m:
      parts.append(f'{m["tokens_per_s"]:,.0f} tok/s')
    return ' | '.join(parts)
