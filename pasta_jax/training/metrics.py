"""What a run shows and records: a console progress bar, TensorBoard events, metrics.jsonl.

Only process 0 writes (the others get disabled writers). The progress bar
rewrites one line with carriage returns on a terminal; when stdout is not a
terminal (a log file, CI) it prints a plain line at every logging step instead.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import IO, Mapping


class MetricWriter:
  """Scalars to TensorBoard event files (tensorboardX) and to `metrics.jsonl`.

  Each jsonl line is `{"step": N, "split": "train" | "eval", "time": unix, ...}`;
  TensorBoard tags are `split/name`.
  """

  def __init__(self, workdir: str, *, enabled: bool = True, tensorboard: bool = True):
    self.enabled = enabled
    self._tb = None
    self._jsonl: IO[str] | None = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a', encoding='utf-8')
    if tensorboard:
      import tensorboardX  # pylint: disable=g-import-not-at-top
      self._tb = tensorboardX.SummaryWriter(logdir=workdir, flush_secs=30)

  def write(self, step: int, split: str, scalars: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    clean = {k: float(v) for k, v in scalars.items()}
    self._jsonl.write(json.dumps({'step': int(step), 'split': split,
                                  'time': round(time.time(), 3), **clean}) + '\n')
    self._jsonl.flush()
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


def format_duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return '?'
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  return f'{hours}:{minutes:02d}:{seconds:02d}' if hours else f'{minutes}:{seconds:02d}'


class ProgressBar:
  """`step 120/2000 [##-------] loss 1.234 | 5,120 tok/s | 0:41 elapsed, ETA 10:03`.

  `update(step)` after every step (cheap: no device sync), `set_metrics` when
  new numbers are known, `message` for lines that must stay (eval results).
  """

  def __init__(self, total: int, *, initial: int = 0, stream: IO[str] | None = None,
               enabled: bool = True, width: int = 24, min_interval: float = 0.2,
               tty: bool | None = None):
    self.total, self.enabled, self.width = total, enabled, width
    self._stream = sys.stdout if stream is None else stream
    self._tty = (hasattr(self._stream, 'isatty') and self._stream.isatty()) if tty is None \
        else tty
    self._min_interval = min_interval
    self._start_step, self._step = initial, initial
    self._start = time.time()
    self._last_draw = 0.0
    self._metrics: dict[str, float] = {}
    self._line_len = 0

  def set_metrics(self, **metrics: float) -> None:
    self._metrics.update(metrics)
    if self.enabled and not self._tty:
      self._print(self._text())

  def update(self, step: int) -> None:
    self._step = step
    if not (self.enabled and self._tty):
      return
    now = time.time()
    if now - self._last_draw >= self._min_interval or step >= self.total:
      self._last_draw = now
      text = self._text()
      pad = ' ' * max(0, self._line_len - len(text))
      self._stream.write('\r' + text + pad)
      self._stream.flush()
      self._line_len = len(text)

  def message(self, text: str) -> None:
    """A line that stays above the bar."""
    if not self.enabled:
      return
    if self._tty and self._line_len:
      self._stream.write('\r' + ' ' * self._line_len + '\r')
      self._line_len = 0
    self._print(text)
    if self._tty:
      self._last_draw = 0.0
      self.update(self._step)

  def close(self) -> None:
    if self.enabled and self._tty and self._line_len:
      self._stream.write('\n')
      self._stream.flush()
      self._line_len = 0

  def _print(self, text: str) -> None:
    self._stream.write(text + '\n')
    self._stream.flush()

  def eta(self) -> float:
    done = self._step - self._start_step
    if done <= 0:
      return float('nan')
    return (time.time() - self._start) / done * (self.total - self._step)

  def _text(self) -> str:
    frac = self._step / self.total if self.total else 1.0
    filled = int(round(self.width * min(frac, 1.0)))
    bar = '#' * filled + '-' * (self.width - filled)
    parts = [f'step {self._step}/{self.total} [{bar}]']
    m = self._metrics
    if 'loss' in m:
      parts.append(f'loss {m["loss"]:.4f}')
    if 'accuracy' in m:
      parts.append(f'acc {100 * m["accuracy"]:.1f}%')
    if 'tokens_per_s' in m:
      parts.append(f'{m["tokens_per_s"]:,.0f} tok/s')
    parts.append(f'{format_duration(time.time() - self._start)} elapsed, '
                 f'ETA {format_duration(self.eta())}')
    return ' | '.join(parts)
