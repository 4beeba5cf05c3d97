"""Progress bar (terminal and log-file forms) and the metric files."""

import io
import json
import os

from pasta_jax.training import metrics


def test_progress_bar_on_a_terminal_rewrites_one_line():
  out = io.StringIO()
  bar = metrics.ProgressBar(100, initial=10, stream=out, tty=True, min_interval=0)
  bar.update(11)
  bar.set_metrics(loss=2.5, accuracy=0.5, tokens_per_s=12345.0)
  bar.update(12)
  bar.message('step 12: validation loss 2.0')
  bar.update(100)
  bar.close()
  text = out.getvalue()
  assert text.count('\n') == 2  # the message and the final newline
  assert '\rstep 11/100 [#' in text
  assert 'step 12/100' in text and ', loss 2.5000 | acc 50.0% | 12,345 tok/s |' in text
  assert '\rstep 12: validation loss 2.0\n' in text  # the bar cleared, the message above
  assert text.endswith('\rstep 100/100 [##########], loss 2.5000 | acc 50.0% | 12,345 tok/s | '
                       '00:00 elapsed, ETA 00:00\n')


def test_progress_bar_in_a_log_file_prints_lines_at_log_steps():
  out = io.StringIO()
  bar = metrics.ProgressBar(50, stream=out, tty=False)
  for step in range(1, 11):
    bar.update(step)
    if step % 5 == 0:
      bar.set_metrics(loss=1.0 / step, tokens_per_s=100.0)
  bar.message('done')
  bar.close()
  lines = out.getvalue().splitlines()
  assert '\r' not in out.getvalue()
  assert len(lines) == 3 and lines[-1] == 'done'
  assert lines[0].startswith('step 5/50 [#') and ', loss 0.2000 | 100 tok/s |' in lines[0]
  assert lines[1].startswith('step 10/50 [##') and ' elapsed, ETA ' in lines[1]
  quiet = io.StringIO()
  bar = metrics.ProgressBar(5, stream=quiet, enabled=False)
  bar.update(1)
  bar.set_metrics(loss=1.0)
  bar.message('x')
  bar.close()
  assert quiet.getvalue() == ''
  quiet_on_a_terminal = io.StringIO()
  bar = metrics.ProgressBar(5, stream=quiet_on_a_terminal, enabled=False, tty=True)
  bar.update(1)
  bar.message('x')
  bar.close()
  assert quiet_on_a_terminal.getvalue() == ''


def test_progress_bar_defaults_to_tqdm_streams(capsys):
  bar = metrics.ProgressBar(4, tty=False)
  bar.update(2)
  bar.set_metrics(loss=1.0)
  bar.message('note')
  bar.close()
  out, err = capsys.readouterr()
  assert out == 'note\n' and err.startswith('step 2/4 [#####     ], loss 1.0000 | ')


def test_metric_writer(tmp_path):
  writer = metrics.MetricWriter(str(tmp_path))
  writer.write(10, 'train', {'loss': 1.5, 'accuracy': 0.25})
  writer.write(20, 'eval', {'loss': 1.25})
  writer.close()
  with open(tmp_path / 'metrics.jsonl') as f:
    rows = [json.loads(line) for line in f]
  assert [(r['step'], r['split'], r['loss']) for r in rows] == [(10, 'train', 1.5),
                                                                (20, 'eval', 1.25)]
  events = [n for n in os.listdir(tmp_path) if n.startswith('events.out.tfevents')]
  assert len(events) == 1
  data = (tmp_path / events[0]).read_bytes()
  assert b'train/loss' in data and b'eval/loss' in data
  disabled = metrics.MetricWriter(str(tmp_path / 'other'), enabled=False)
  disabled.write(1, 'train', {'loss': 1.0})
  disabled.close()
  assert not os.path.exists(tmp_path / 'other')
