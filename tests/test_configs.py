"""Every config in configs/ loads the way `python -m ris_jax.main --config` loads it (with each
documented argument), passes `ris_jax.config.validate`, and sets no field that the defaults
lack (a stale or misspelt field would otherwise be added silently)."""
import functools
import glob
import importlib
import inspect
import json
import os
import re

import jax
import jax.numpy as jnp
import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

from conftest import REPO
from configs import default
from ris_jax import config as config_lib
from ris_jax.errors import UserError

CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(REPO, 'configs', '*.py'))
                 if not os.path.basename(p).startswith(('_', 'default')))
OFFLINE = ('digits', 'fashion_mnist')  # teachers trained offline: no checkpoint needed


def documented_args(name):
  """The arguments a config's docstring documents: those of its example commands
  (`--config configs/<name>.py:ARG`) and of its `Argument:` line (wKaK tokens, each also with
  ',gdfq' when the line offers it); None stands for no argument (the default)."""
  module = importlib.import_module(f'configs.{name}')
  args = {None}
  doc = module.__doc__ or ''
  args |= set(re.findall(rf'configs/{name}\.py:([\w,]+)', doc))
  for line in re.findall(r'Arguments?:([^\n]*)', doc):
    for bits in re.findall(r'\bw\da\d\b', line):
      args.add(bits)
      if ',gdfq' in line:
        args.add(bits + ',gdfq')
  takes_arg = bool(inspect.signature(module.get_config).parameters)
  assert takes_arg or args == {None}, f'configs/{name}.py documents arguments it does not take'
  return sorted(args, key=str)


CASES = [(name, arg) for name in CONFIGS for arg in documented_args(name)]


def load(name, arg=None):
  """As main does: config_flags.DEFINE_config_file + `--config configs/<name>.py[:arg]`."""
  values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, '', flag_values=values, lock_config=True)
  spec = os.path.join(REPO, 'configs', f'{name}.py') + (f':{arg}' if arg else '')
  values(['test', f'--config={spec}'])
  return values.config


def leaf_keys(config, prefix=''):
  out = set()
  for k, v in config.items():
    if isinstance(v, ml_collections.ConfigDict):
      out |= leaf_keys(v, f'{prefix}{k}.')
    else:
      out.add(f'{prefix}{k}')
  return out


def test_configs_found():
  assert {'demo', 'teacher_digits', 'teacher_fashion', 'fashion_resnet', 'cifar10_resnet20',
          'imagenet_resnet18'} <= set(CONFIGS)
  assert ('cifar10_resnet20', 'w3a3,gdfq') in CASES and ('demo', 'w2a4') in CASES
  assert {('fashion_resnet', a) for a in ('w4a4', 'w3a3', 'w4a4,gdfq', 'w3a3,gdfq')} <= set(CASES)


def test_fashion_configs_share_the_cached_teacher():
  """The quantization config must train (and find in the cache) the very teacher that
  teacher_fashion.py describes; so do the digits demo and teacher_digits.py."""
  from ris_jax import teacher
  for teacher_name, run_name, arg in (('teacher_fashion', 'fashion_resnet', 'w4a4'),
                                      ('teacher_digits', 'demo', 'w3a3')):
    t, run = load(teacher_name), load(run_name, arg)
    assert run.teacher == t.teacher and run.teacher_training == t.teacher_training
    assert teacher.cache_path(run) == teacher.cache_path(t)


def test_teacher_cache_key_holds_the_training_settings():
  """Another number of epochs (or any teacher_training field) is another cached teacher, so
  a changed setting is never answered with a stale teacher; the run seed is not part of it."""
  from ris_jax import teacher
  base = load('demo')
  paths = {teacher.cache_path(base)}
  for field, value in (('epochs', 3), ('learning_rate', 0.05), ('seed', 1)):
    c = load('demo')
    c.teacher_training[field] = value
    paths.add(teacher.cache_path(c))
  assert len(paths) == 4
  other_run_seed = load('demo')
  other_run_seed.seed = 7
  assert teacher.cache_path(other_run_seed) == teacher.cache_path(base)


@pytest.mark.parametrize('name,arg', CASES)
def test_config_loads_and_validates(name, arg, tmp_path):
  config = load(name, arg)
  assert isinstance(config, ml_collections.ConfigDict)
  stale = leaf_keys(config) - leaf_keys(default.get_config())
  assert not stale, f'configs/{name}.py sets fields the defaults lack: {sorted(stale)}'
  if config.mode != 'train_teacher' and not config.teacher.checkpoint and config.data.dataset not in OFFLINE:
    with config.unlocked():  # published teachers are user-supplied weights
      config.teacher.checkpoint = str(tmp_path / 'teacher.pth')
    (tmp_path / 'teacher.pth').write_bytes(b'')
  config_lib.validate(config)
  if arg and arg.split(',')[0].startswith('w'):
    bits = arg.split(',')[0]
    assert (config.quant.w_bits, config.quant.a_bits) == (int(bits[1]), int(bits[3]))
    assert config.method == ('gdfq' if arg.endswith(',gdfq') else 'ris')
  modes = {'teacher': 'train_teacher', 'ptq': 'ptq', 'dfkd': 'dfkd'}  # by the name's prefix
  assert config.mode == modes.get(name.split('_')[0], 'train')


@pytest.mark.parametrize('name', [n for n in CONFIGS if documented_args(n) != [None]])
def test_bad_config_argument_is_refused(name):
  with pytest.raises((ValueError, flags.Error), match='must be one of'):
    load(name, 'w9a9')


def test_validate_refuses_bad_values():
  config = default.get_config()
  config.quant.w_bits = 1
  with pytest.raises(UserError, match='w_bits'):
    config_lib.validate(config)
  config = default.get_config()
  config.loss.kd_reduction = 'sum'
  with pytest.raises(UserError, match='kd_reduction'):
    config_lib.validate(config)


def _abstract_teacher(spec):
  x = jax.ShapeDtypeStruct((1,) + spec.input_shape, jnp.float32)
  v = jax.eval_shape(lambda x: spec.module().init(jax.random.key(0), x, train=False), x)
  return {'params': v['params'], 'batch_stats': v['batch_stats']}


QUICK_BUILDS = ('demo', 'cifar10_akamaster')
BUILDS = [(name, None) for name in CONFIGS] + [
    ('demo', 'w3a3,ait'), ('cifar10_resnet20', 'w4a4,ait'), ('imagenet_resnet18', 'w4a4,ait')]


@pytest.mark.parametrize('name,arg', [
    case if case[0] in QUICK_BUILDS else pytest.param(*case, marks=pytest.mark.full(
        reason='eval_shape traces of every full-size config (~40 s together); the demo and the '
        'akamaster configs take the same path in the quick tier')) for case in BUILDS])
def test_config_builds_its_models_and_a_step(name, arg):
  """Each config's models and state, and one step of its mode, traced abstractly
  (jax.eval_shape: no weights, no compute): a teacher/student/generator that do not fit
  together fails here, not on a user's machine."""
  from ris_jax import student, train
  from ris_jax.models import get_arch
  config = load(name, arg)
  if config.method == 'gdfq':
    config = config_lib.gdfq_baseline(config)
  if config.student.method == 'ait':
    config = config_lib.ait_student(config)
  spec = get_arch(config.teacher.arch)
  module, t_vars = spec.module(), _abstract_teacher(spec)
  classes = spec.num_classes
  if config.mode == 'train_teacher':
    b = config.teacher_training.batch_size
    x = jax.ShapeDtypeStruct((b,) + spec.input_shape, jnp.float32)
    logits, _ = jax.eval_shape(lambda v, x: module.apply(v, x, train=True, mutable=['batch_stats']),
                               t_vars, x)
    assert logits.shape == (b, classes)
    return
  if config.mode == 'ptq':
    x = jax.ShapeDtypeStruct((config.ptq.batch_size,) + spec.input_shape, jnp.float32)

    def calibrate(t_vars, x):
      s_module, s_vars = student.make_student(spec, t_vars, train.quant_spec(config))
      return student.calibrate_step(s_module, s_vars, x)
    logits, s_vars = jax.eval_shape(calibrate, t_vars, x)
    assert logits.shape == (config.ptq.batch_size, classes) and 'quant_ranges' in s_vars
    return
  assert config.mode in config_lib.TRAINING_MODES
  built = {}

  def build(t_vars):
    built['models'], state = train.build(config, spec, module, t_vars)
    return state
  state = jax.eval_shape(build, t_vars)
  models = built['models']
  assert (models.generator.image_size, models.generator.channels) == (spec.image_size,
                                                                      spec.in_channels)
  # One fine-tuning iteration (generator step, then student step with calibration).
  step = functools.partial(train.ris_step, models=models, batch_size=config.train.batch_size,
                           mesh=train.make_mesh(), update_student=True, calibrate=True)
  new, metrics = jax.eval_shape(step, state, t_vars, jnp.zeros(2))
  assert jax.tree.map(lambda s: (s.shape, s.dtype), new) == jax.tree.map(
      lambda s: (s.shape, s.dtype), state)
  assert metrics['g_loss'].shape == metrics['s_loss'].shape == ()
  assert ('g_rob' in metrics) == bool(config.loss.robust_weight)
  assert ('gi_alpha_mean' in metrics) == (config.student.method == 'ait')


def test_a_run_recorded_before_fields_were_added_resumes(tmp_path):
  """loop.refuse_other_run: a config.json written before the diagnostics section, the AIT
  fields and the other later fields existed (each recorded with the value the run had) is the
  same run as today's config, whatever the diagnostics' settings; a changed field still makes
  it another run."""
  from ris_jax import loop
  config = load('demo')
  old = json.loads(config.to_json())
  del old['diagnostics']
  for key in ('method', 'gi_threshold', 'gi_cap_updates', 'gi_search_iters', 'gi_max_doublings'):
    del old['student'][key]
  del old['data']['subsets']
  (tmp_path / 'config.json').write_text(json.dumps(old))
  loop.refuse_other_run(config, str(tmp_path))  # resumes: no error
  with config.unlocked():
    config.diagnostics.enabled = False
    config.diagnostics.probe_size = 20
  loop.refuse_other_run(config, str(tmp_path))
  with config.unlocked():
    config.seed = 1
  with pytest.raises(UserError, match=r'holds a run of another config \(seed: 0 → 1\)'):
    loop.refuse_other_run(config, str(tmp_path))
