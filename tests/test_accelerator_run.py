"""experiments/accelerator_run.py dry-run on CPU: the real akamaster ResNet-20 and CIFAR-10 files,
a tiny schedule (6 iterations, batch 16, 1,000 test images), chunks of 3 iterations: one chunk
per method in a first process, the second chunk in a second process that resumes both runs
from their checkpoints; the JSON lines, and the chunked run equal to the same run made in one go."""
import json
import os

import numpy as np
import pytest

from conftest import run_python, subprocess_env
from test_cifar10_real import SHARED, shared

pytestmark = pytest.mark.full(reason='compiles the ResNet-20 GDFQ and RIS programs of the script '
                              'in two processes (~2 min)')
TINY = ['--schedule', 'cpu6,warm1', '--set', 'train.batch_size=16', '--set', 'generator.width=16',
        '--set', 'generator.latent_dim=16', '--set', 'data.split=all[:1000]',
        '--set', 'data.subsets=val=0:500,report=500:1000', '--set', 'train.eval_every=2']


def rows(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [{k: v for k, v in json.loads(line).items() if k != 'steps_per_s'} for line in f]


@shared
def test_two_chunks_in_two_processes(compile_cache, tmp_path):
  out, workdir = tmp_path / 'run.jsonl', tmp_path / 'runs'
  args = ['experiments/accelerator_run.py', '--data', SHARED, '--workdir', str(workdir), '--out',
          str(out), '--chunk-steps', '3', '--max-chunks', '1', *TINY]
  env = subprocess_env(compile_cache)
  run_python(args, env)
  first = [json.loads(l) for l in out.read_text().splitlines()]
  run_python(args, env)  # a new process: resumes each method from its checkpoint
  lines = [json.loads(l) for l in out.read_text().splitlines()]
  assert lines[:len(first)] == first
  assert [l['event'] for l in lines] == ['environment', 'chunk', 'chunk', 'environment', 'chunk',
                                        'finished', 'chunk', 'finished']
  env_line = lines[0]
  assert env_line['platform'] == 'cpu' and env_line['versions']['jax']
  chunks = [l for l in lines if l['event'] == 'chunk']
  assert [(c['method'], c['from'], c['iteration']) for c in chunks] == [
      ('gdfq', 0, 3), ('ris', 0, 3), ('gdfq', 3, 6), ('ris', 3, 6)]
  for c in chunks:
    assert c['steps'] == 6 and c['iterations_per_s'] > 0 and set(c['top1_report']) == {'w4a4', 'w3a3'}
    assert all(0 <= v <= 100 for v in c['top1_report'].values())
  finished = {l['method']: l['results'] for l in lines if l['event'] == 'finished'}
  for method in ('gdfq', 'ris'):
    results = json.loads((workdir / method / 'results.json').read_text())
    assert finished[method] == results
    last = [c for c in chunks if c['method'] == method][-1]
    assert last['top1_report'] == {t: round(r['student_top1_final_report'], 2)
                                   for t, r in results['students'].items()}
  # The chunked GDFQ run equals the same run made in one go (the loop's resume is exact).
  whole = tmp_path / 'whole'
  run_python(['experiments/accelerator_run.py', '--data', SHARED, '--workdir', str(whole),
              '--out', str(tmp_path / 'whole.jsonl'), '--methods', 'gdfq', *TINY], env)
  a, b = rows(workdir / 'gdfq'), rows(whole / 'gdfq')
  assert [r['step'] for r in a] == [r['step'] for r in b]
  for ra, rb in zip(a, b):
    assert ra.keys() == rb.keys()
    for k in ra:
      np.testing.assert_allclose(ra[k], rb[k], rtol=1e-6, err_msg=f"step {ra['step']} {k}")
