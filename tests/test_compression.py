"""Other data-free compression: PTQ without fine-tuning (ris_jax/ptq.py) and data-free KD into
a smaller full-precision student (train.py with `Models.student_kind == 'fp'`), on the session's
2-epoch digits teacher at test size (batch 16, width-16 generator)."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from conftest import run_python, subprocess_env
from ris_jax import config as config_lib, evaluation, ptq, quant, student, teacher, train
from ris_jax.errors import UserError
from ris_jax.models import get_arch

TINY = {'train.batch_size': 16, 'generator.width': 16, 'generator.latent_dim': 16,
        'train.progress': False}


def _tiny(config, teacher_dir, **more):
  with config.unlocked():
    config.teacher.checkpoint = teacher_dir
    for k, v in {**TINY, **more}.items():
      section, field = k.split('.')
      config[section][field] = v
  return config


# ----------------------------------------------------------------------------- PTQ


def test_clip_kernel_is_a_clipped_quantizer_range():
  kernel = jax.random.normal(jax.random.PRNGKey(0), (3, 3, 4, 5))
  k = np.asarray(kernel)
  lo, hi = k.min((0, 1, 2)), k.max((0, 1, 2))
  clipped = ptq.clip_kernel(kernel, 0.7)
  np.testing.assert_array_equal(clipped, np.clip(k, 0.7 * lo, 0.7 * hi))
  # The per-channel quantizer of the clipped kernel spans exactly 0.7·[min, max].
  np.testing.assert_allclose(np.asarray(clipped).min((0, 1, 2)), 0.7 * lo, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(clipped).max((0, 1, 2)), 0.7 * hi, rtol=1e-6)
  np.testing.assert_array_equal(quant.WeightQuantizer(4)(clipped),
                                quant.fake_quant(clipped, 0.7 * lo, 0.7 * hi, 4))
  np.testing.assert_array_equal(ptq.clip_kernel(kernel, 1.0), kernel)


@pytest.fixture(scope='module')
def calibrated(digits_teacher):
  """The W3A3 student of the digits teacher calibrated on two batches of noise, 32 held images
  and the teacher's logits on them."""
  from configs import ptq_digits
  config = _tiny(ptq_digits.get_config('w3a3'), digits_teacher)
  spec, t_module, t_vars = teacher.get_teacher(config)
  module, variables = student.make_student(spec, t_vars, train.quant_spec(config))
  images = jax.random.normal(jax.random.PRNGKey(1), (2, 16) + spec.input_shape)
  variables = student.calibrate(module, variables, list(images))
  held = images.reshape((-1,) + spec.input_shape)
  return module, variables, held, t_module.apply(t_vars, held)


@pytest.mark.full(reason='re-evaluates the output MSE of every grid point of every layer in '
                  'Python (~28 s); test_mse_clipping_removes_an_outlier checks the search quickly')
def test_mse_clipping_is_exact_bookkeeping(calibrated):
  module, variables, held, reference = calibrated
  clipped, info = ptq.clip_weights(module, variables, held, reference, (1.0, 0.7, 0.5))
  before = float(ptq.output_mse(module, variables, held, reference))
  after = float(np.mean((np.asarray(module.apply(clipped, held)) - np.asarray(reference)) ** 2))
  assert info['mse_before'] == pytest.approx(before, rel=1e-5)
  assert info['mse_after'] == pytest.approx(after, rel=1e-5)
  # Every kernel is its original clipped at the chosen α; nothing else changed.
  flat_old = traverse_util.flatten_dict(variables['params'])
  flat_new = traverse_util.flatten_dict(clipped['params'])
  paths = ptq.kernel_paths(module, variables, held[:1])  # 19 + 2 shortcut convs, the dense
  assert len(info['alphas']) == len(paths) == 22
  assert paths[0][0] == 'init_block' and paths[-1][0] == 'output'  # forward order
  for path, old in flat_old.items():
    alpha = info['alphas'].get('/'.join(path[:-1]), 1.0) if path[-1] == 'kernel' else 1.0
    np.testing.assert_array_equal(flat_new[path], ptq.clip_kernel(old, alpha))
  assert clipped['quant_ranges'] is variables['quant_ranges']


OUTLIER = ('output', 'kernel')


@pytest.mark.full(reason='calibrates the W3A3 digits student and searches every layer (~60 s)')
def test_mse_clipping_removes_an_outlier(calibrated):
  """One classifier weight 50× the kernel's largest magnitude in the network being quantized
  (the FP reference keeps the normal weight; no activation quantizer after the classifier
  bounds its effect on the logits): that channel's range is the outlier, and clipping to
  α·[min, max] cuts its error by 1 − α. The search must pick the smallest α of the grid for
  that layer and cut the MSE by more than half."""
  module, variables, held, reference = calibrated
  flat = traverse_util.flatten_dict(variables['params'])
  kernel = np.array(flat[OUTLIER])
  # on the pooled feature most active on the held images (a dead one would make it harmless)
  _, taps = module.apply(variables, held, mutable=['features'])
  busiest = int(np.argmax(np.asarray(taps['features']['pooled']).mean(0)))
  kernel[busiest, 0] = 50 * np.abs(kernel).max()
  spiked = {**variables, 'params': traverse_util.unflatten_dict({**flat, OUTLIER: jnp.asarray(kernel)})}
  clipped, info = ptq.clip_weights(module, spiked, held, reference, (1.0, 0.7, 0.5))
  assert info['alphas']['output'] == 0.5, info['alphas']
  assert info['mse_after'] < 0.5 * info['mse_before'], info
  clean = float(ptq.output_mse(module, variables, held, reference))
  assert info['mse_before'] > 2 * clean  # the outlier did cost something


@pytest.mark.full(reason='needs the calibrated W3A3 student of the clipping tests (~40 s)')
def test_unit_clip_grid_is_no_clipping(calibrated):
  module, variables, held, reference = calibrated
  clipped, info = ptq.clip_weights(module, variables, held, reference, (1.0,))
  assert set(info['alphas'].values()) == {1.0} and info['mse_after'] == info['mse_before']
  jax.tree.map(np.testing.assert_array_equal, clipped, variables)


def test_bad_ptq_source_is_refused_before_compute(tmp_path):
  from configs import ptq_digits
  config = ptq_digits.get_config('w4a8')
  config.ptq.source = f'generator:{tmp_path}/nothing'
  with pytest.raises(UserError, match='holds no ris_jax run'):
    ptq.check_source(config)  # main.run calls it right after config_lib.validate
  config.ptq.source = 'imagenet'
  with pytest.raises(UserError, match='not one of noise, real'):
    ptq.check_source(config)


# ----------------------------------------------------------------------------- DFKD

STEPS = 4
# The CLI run and the in-process tests share one compiled step (same schedule, persistent cache).
DFKD = {**TINY, 'train.steps': STEPS, 'train.decay_steps': (3,), 'train.log_every': 2,
        'train.eval_every': 2, 'train.checkpoint_every': 2}


def _dfkd_config(teacher_dir):
  from configs import dfkd_digits
  return _tiny(config_lib.gdfq_baseline(dfkd_digits.get_config('gdfq')), teacher_dir, **DFKD)


@pytest.fixture(scope='module')
def dfkd_run(digits_teacher, compile_cache, tmp_path_factory):
  """`python -m ris_jax.main --config configs/dfkd_digits.py:gdfq` for 4 tiny steps."""
  workdir = tmp_path_factory.mktemp('dfkd') / 'run'
  overrides = {**DFKD, 'train.decay_steps': '(3,)', 'teacher.checkpoint': digits_teacher}
  proc = run_python(['-m', 'ris_jax.main', '--config', 'configs/dfkd_digits.py:gdfq',
                     '--workdir', str(workdir)] + [f'--config.{k}={v}' for k, v in overrides.items()],
                    subprocess_env(compile_cache))
  return workdir, json.loads(proc.stdout[proc.stdout.index('{'):])


@pytest.mark.full(reason='`python -m ris_jax.main` in a subprocess for DFKD (~25 s); the quick '
                  'tier runs one jitted DFKD iteration (test_dfkd_step_trains_the_fp_student_only)')
def test_dfkd_main_end_to_end(dfkd_run):
  workdir, printed = dfkd_run
  results = json.loads((workdir / 'results.json').read_text())
  assert printed == results
  assert (results['mode'], results['method'], results['student_arch']) == ('dfkd', 'gdfq', 'resnet8_digits')
  assert results['steps'] == STEPS and results['teacher_top1'] > 30.0
  rows = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  logged = [r for r in rows if 's_kd' in r]
  assert [r['step'] for r in logged] == [2, 4]
  # final = the last evaluation; best = the best evaluation (no warm-up in DFKD)
  evals = {r['step']: r['student_top1'] for r in rows if 'student_top1' in r}
  assert sorted(evals) == [2, 4]
  assert results['student_top1_final'] == evals[4]
  assert results['student_top1_best'] == max(evals.values())
  assert all(np.isfinite(v) for r in logged for v in r.values())
  assert {'2', '4'} <= set(os.listdir(workdir / 'checkpoints'))
  # The checkpoint restores into the DFKD state layout; its student (ResNet-8, its own BN
  # statistics) scores what results.json says.
  models, state = ptq.load_generator(str(workdir))
  assert models.student_kind == 'fp' and int(state.step) == STEPS
  kernel = state.student['fp']['stage1_unit1']['body']['conv1']['conv']['kernel']
  assert kernel.shape == (3, 3, 16, 16) and 'stage1_unit2' not in state.student['fp']
  top1 = evaluation.accuracy(models.student, train.student_variables(state, None, 'fp'), 'digits',
                             'test', 360)
  assert top1 == results['student_top1_final']


def test_dfkd_step_trains_the_fp_student_only(digits_teacher, compile_cache):
  config = _dfkd_config(digits_teacher)
  spec, t_module, t_vars = teacher.get_teacher(config)
  models, state = train.build(config, spec, t_module, t_vars)
  assert models.student_kind == 'fp'
  before = jax.device_get((state, t_vars))
  mesh = train.make_mesh()
  step = train.jit_ris_step(models, config.train.batch_size, mesh)
  new, metrics = step(train.replicate(state, mesh), train.replicate(t_vars, mesh), jnp.zeros(2),
                      update_student=True, calibrate=False)
  old_state, old_t = before
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(t_vars), old_t)  # teacher unchanged
  for old, cur in zip(jax.tree.leaves(old_state.student['fp']), jax.tree.leaves(new.student['fp'])):
    assert not np.array_equal(old, cur)  # every student parameter moved
  # BN statistics: the student's training-mode BN on the images of this step (regenerated
  # here from the step's RNG and the generator before its update).
  k_z, k_y, _ = jax.random.split(jax.random.fold_in(old_state.rng, 0), 3)
  z = jax.random.normal(k_z, (16, 16))
  _, targets = train.sample_labels(models, k_y, 16)
  images = models.generator.apply(old_state.generator, z, targets)
  _, updates = models.student.apply({'params': old_state.student['fp'],
                                     'batch_stats': old_state.quant_ranges['fp']},
                                    images, train=True, mutable=['batch_stats'])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               jax.device_get(new.quant_ranges['fp']), jax.device_get(updates['batch_stats']))
  assert not np.allclose(new.quant_ranges['fp']['init_block']['bn']['mean'],
                         old_state.quant_ranges['fp']['init_block']['bn']['mean'])
  assert np.isfinite(float(metrics['s_kd']))


@pytest.mark.full(reason='eight jitted DFKD student updates (~10 s); one DFKD iteration stays in the quick tier')
def test_kd_loss_falls_on_a_fixed_batch(digits_teacher):
  config = _dfkd_config(digits_teacher)
  spec, t_module, t_vars = teacher.get_teacher(config)
  models, state = train.build(config, spec, t_module, t_vars)
  images = jax.random.normal(jax.random.PRNGKey(3), (16,) + spec.input_shape)
  t_logits = t_module.apply(t_vars, images)
  labels = jnp.argmax(t_logits, -1)

  @jax.jit
  def sgd(params, opt, stats):
    (_, (stats, m)), g = jax.value_and_grad(train.student_loss, has_aux=True)(
        params, models, t_vars, stats, images, labels, t_logits, False)
    updates, opt = models.student_tx.update(g, opt, params)
    return jax.tree.map(jnp.add, params, updates), opt, stats, m['s_kd']

  params, opt, stats = state.student['fp'], state.student_opt['fp'], state.quant_ranges['fp']
  kd = []
  for _ in range(8):
    params, opt, stats, value = sgd(params, opt, stats)
    kd.append(float(value))
  assert kd[-1] < 0.5 * kd[0], kd


# ----------------------------------------------------------------------------- PTQ sources


@pytest.mark.full(reason='four PTQ runs, one per calibration source (~50 s); the quick tier runs one from a calibration set (test_ptq_from_a_calibration_set)')
def test_ptq_from_each_source(digits_teacher, tiny_run, tmp_path):
  """Each source feeds its own images to the calibration (noise: the seeded normal draws;
  real: training digits; generator: the trained generator's batches, which its last BN
  normalizes per channel), the images set other activation ranges, and the reported top-1
  is that of the student calibrated on exactly those images."""
  from configs import ptq_digits
  from ris_jax import data, main
  from ris_jax import synthesize
  workdir, _ = tiny_run  # a trained generator (RIS)
  train_images = {im.tobytes() for im in data.load_arrays('digits', 'train')['image']}
  calibration_set = str(tmp_path / 'calib.npz')  # that generator's images as uint8 pixels
  synthesize.write(synthesize.synthesize(str(workdir), 40, progress=False), calibration_set, 'npz')
  npz_images = {im.tobytes() for im in data.load_arrays(
      f'npz:{calibration_set}', 'all', normalization=get_arch('resnet20_digits').normalization)['image']}
  ranges = {}
  for source in ('noise', 'real', f'generator:{workdir}', f'npz:{calibration_set}'):
    config = _tiny(ptq_digits.get_config('w4a8'), digits_teacher)
    config.ptq.batch_size = 16
    config.ptq.calibration_batches = 2
    config.ptq.clip_batches = 1
    config.ptq.clip_grid = (1.0, 0.5)
    config.ptq.clip_weights = source == 'noise'  # the search itself is tested above
    config.ptq.source = source
    out = tmp_path / source.split(':')[0]
    results = main.run(config, str(out))
    assert json.loads((out / 'results.json').read_text()) == results
    assert results['source'] == source and results['calibration_images'] == 32
    assert results['teacher_top1'] > 30.0
    assert ('top1_clipped' in results) == config.ptq.clip_weights

    spec, _, t_vars = teacher.get_teacher(config)
    batches = [np.asarray(b) for b in ptq.calibration_images(config, spec)]
    assert [b.shape for b in batches] == [(16,) + spec.input_shape] * 2
    kind = source.split(':')[0]
    if kind == 'noise':
      for i, b in enumerate(batches):
        np.testing.assert_array_equal(b, jax.random.normal(jax.random.fold_in(
            jax.random.PRNGKey(config.seed), i), b.shape))
    elif kind == 'real':
      assert all(im.tobytes() in train_images for b in batches for im in b)
    elif kind == 'npz':  # rows of the archive, normalized with the teacher's statistics
      assert all(im.tobytes() in npz_images for b in batches for im in b)
    else:  # the generator ends in a non-affine batch-statistics BN
      for b in batches:
        np.testing.assert_allclose(b.mean((0, 1, 2)), 0.0, atol=1e-5)
        np.testing.assert_allclose(b.var((0, 1, 2)), 1.0, rtol=1e-3)
        assert not any(im.tobytes() in train_images for im in b)
    module, variables = student.make_student(spec, t_vars, train.quant_spec(config))
    variables = student.calibrate(module, variables, batches)
    assert results['top1_calibrated'] == evaluation.accuracy(module, variables, 'digits', 'test', 360)
    stem = variables['quant_ranges']['init_block']['Activation_0']
    deep = variables['quant_ranges']['stage3_unit3']['Activation_0']
    ranges[kind] = np.array([float(stem['hi']), float(deep['hi'])])
  # Real, generator and npz images set other activation ranges than noise (an upper end of
  # the stem's or the last unit's range differs by more than 5 %).
  for other in ('real', 'generator', 'npz'):
    a, b = ranges['noise'], ranges[other]
    assert np.any(np.abs(a - b) > 0.05 * np.maximum(a, b)), ranges


def test_ptq_from_a_calibration_set(digits_teacher, tiny_run, tmp_path):
  """`ptq.source=npz:PATH`: a calibration set made by `ris_jax.synthesize` from a trained
  generator calibrates the student; every batch holds rows of the archive normalized with the
  teacher's statistics, and the reported top-1 is that of the student calibrated on them."""
  from configs import ptq_digits
  from ris_jax import data, main, synthesize
  path = str(tmp_path / 'calib.npz')
  synthesize.write(synthesize.synthesize(str(tiny_run[0]), 24, progress=False), path, 'npz')
  config = _tiny(ptq_digits.get_config('w4a8'), digits_teacher)
  config.ptq.update(batch_size=16, calibration_batches=2, clip_weights=False, source=f'npz:{path}')
  results = main.run(config, str(tmp_path / 'ptq'))
  assert results['source'] == f'npz:{path}' and results['calibration_images'] == 32
  spec, _, t_vars = teacher.get_teacher(config)
  rows = {im.tobytes() for im in data.load_arrays(f'npz:{path}', 'all', normalization=spec.normalization)['image']}
  batches = [np.asarray(b) for b in ptq.calibration_images(config, spec)]
  assert [b.shape for b in batches] == [(16,) + spec.input_shape] * 2
  assert all(im.tobytes() in rows for b in batches for im in b)
  module, variables = student.make_student(spec, t_vars, train.quant_spec(config))
  variables = student.calibrate(module, variables, batches)
  assert results['top1_calibrated'] == evaluation.accuracy(module, variables, 'digits', 'test', 360)
  with pytest.raises(UserError, match='does not exist; make a calibration set'):
    config.ptq.source = f'npz:{tmp_path}/missing.npz'
    ptq.check_source(config)
