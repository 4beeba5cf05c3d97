"""scripts/launch_tpu_pod.sh builds one gcloud command that runs on every worker."""

import os
import shlex
import subprocess

from tests.training.conftest import ROOT

SCRIPT = os.path.join(ROOT, 'scripts', 'launch_tpu_pod.sh')


def _run(*args):
  return subprocess.run(['bash', SCRIPT, *args], capture_output=True, text=True, timeout=60)


def test_dry_run_quotes_the_command_for_every_worker():
  result = _run('--tpu', 'pod-1', '--zone', 'us-central2-b', '--project', 'p',
                '--dir', 'src/pasta jax', '--install', '--dry_run', '--',
                'python', '-m', 'pasta_jax.train', '--config', 'configs/gemma_sft.py:7b',
                '--workdir', '/mnt/runs/a b', '--config.data.prompt_template={prompt}!')
  assert result.returncode == 0, result.stderr
  argv = shlex.split(result.stdout)
  assert argv[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'pod-1']
  assert argv[argv.index('--zone') + 1] == 'us-central2-b'
  assert argv[argv.index('--project') + 1] == 'p' and '--worker=all' in argv
  remote = argv[argv.index('--command') + 1]
  # What each worker's shell runs:
  assert remote.startswith("cd src/pasta\\ jax && pip install -e . && pip install -U "
                           '"jax[tpu]" && PASTA_DISTRIBUTED=1 python -m pasta_jax.train ')
  assert shlex.split(remote.split('PASTA_DISTRIBUTED=1 ')[1]) == [
      'python', '-m', 'pasta_jax.train', '--config', 'configs/gemma_sft.py:7b',
      '--workdir', '/mnt/runs/a b', '--config.data.prompt_template={prompt}!']


def test_missing_arguments():
  result = _run('--zone', 'z', '--', 'ls')
  assert result.returncode == 2 and 'need --tpu, --zone and a command' in result.stderr
  result = _run('--tpu', 't', '--zone', 'z', '--bogus')
  assert result.returncode == 2 and 'unknown option --bogus' in result.stderr
