"""Entry point: python -m ris_jax.main --config configs/<name>.py[:arg] --workdir DIR
[--config.field=value ...]. The only module that reads flags."""
from __future__ import annotations

import json
import os
import signal
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from ris_jax.errors import Terminated, UserError, exit_with_error


def define_flags(flag_values=flags.FLAGS):
  """Defines --config and --workdir on `flag_values`; returns their holders."""
  config = config_flags.DEFINE_config_file('config', None, 'Experiment config file.',
                                           flag_values=flag_values, lock_config=True)
  workdir = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and results.',
                                flag_values=flag_values)
  flags.mark_flags_as_required(['config', 'workdir'], flag_values=flag_values)
  return config, workdir


_CONFIG, _WORKDIR = define_flags()


def run(config, workdir: str) -> dict:
  """Dispatches on `config.mode`; returns the results dict."""
  from ris_jax import config as config_lib, loop, teacher
  from ris_jax import distributed
  distributed.initialize(config)  # before anything starts a jax backend (validate counts devices)
  config_lib.validate(config)
  if config.mode == 'ptq':  # its calibration source, also before any compute
    from ris_jax import ptq
    ptq.check_source(config)
  config = config_lib.resolved(config)
  if config.mode in config_lib.TRAINING_MODES:
    if not config.run_baseline:
      runs = {None: (config, workdir)}
    else:
      runs = {'ris': (config, os.path.join(workdir, 'ris')),
              'gdfq': (config_lib.gdfq_baseline(config), os.path.join(workdir, 'gdfq'))}
    for run_config, run_workdir in runs.values():
      loop.refuse_other_run(run_config, run_workdir)
  if config.mode != 'train_teacher':
    from ris_jax import data
    from ris_jax.models import get_arch
    # Fails now, before any compute, if the evaluation data is not prepared or does not fit.
    spec = get_arch(config.teacher.arch)
    data.eval_batches(config.data.dataset, config.data.split, 1, config.data.data_dir,
                      normalization=spec.normalization, num_classes=spec.num_classes)
  if config.mode == 'train_teacher':
    return teacher.train_teacher(config, os.path.join(workdir, 'teacher'))
  if config.mode == 'eval_teacher':
    from ris_jax import evaluation
    spec, module, variables = teacher.get_teacher(config)
    d = config.data
    correct, examples = evaluation.correct_and_total(
        module, variables, d.dataset, d.split, d.eval_batch_size, d.data_dir, spec.normalization)
    return {'teacher_top1': 100.0 * correct / examples, 'eval_examples': examples}
  if config.mode == 'ptq':
    from ris_jax import ptq
    return ptq.run(config, workdir)
  if not config.run_baseline:
    return loop.train_and_evaluate(config, workdir)
  results = {name: loop.train_and_evaluate(*args) for name, args in runs.items()}
  config_lib.write_summary(results, workdir, config.student.method)
  return results


def parse_flags(argv, flag_values=None):
  """absl flag parsing with config errors (unknown field — with ml_collections' "did you
  mean" —, bad value, missing file) as one line on stderr and exit code 2."""
  try:
    return (flags.FLAGS if flag_values is None else flag_values)(argv)
  except (KeyError, AttributeError, ValueError, flags.Error) as e:
    detail = str(e.args[0] if e.args else e).replace('\\n', ' ').replace('\n', ' ')
    detail = ' '.join(detail.replace('\\', '').split()).strip('\'"').replace("' Did", ': did')
    overrides = [a for a in argv[1:] if a.startswith('--config.')]
    print(f'error: bad --config or override ({detail}); given: {" ".join(overrides)}',
          file=sys.stderr)
    sys.exit(2)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.ERROR)  # keep jax/orbax/tfds chatter off the terminal
  try:
    results = run_flags(_CONFIG, _WORKDIR)
  except UserError as e:
    exit_with_error(e)
  except Terminated as e:  # checkpoint saved: a requeued job resumes with the same command
    print(f'stopped: {e}', file=sys.stderr, flush=True)
    sys.exit(128 + signal.SIGTERM)
  print(json.dumps(results, indent=2))


def run_flags(config_flag, workdir_flag) -> dict:
  """`run` on parsed --config / --workdir holders; a config file that cannot load is a
  `UserError` too."""
  try:
    config = config_flag.value
    config.mode  # config files load lazily: a missing or broken file fails here
  except OSError as e:
    raise UserError(f'cannot load the config file: {" ".join(str(e).split())[:300]}') from None
  return run(config, workdir_flag.value)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
