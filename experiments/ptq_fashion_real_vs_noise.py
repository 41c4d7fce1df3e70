"""Why PTQ calibrated on real Fashion-MNIST images scores below Gaussian noise at W4A4.

    python experiments/ptq_fashion_real_vs_noise.py --seeds 0,1,2 > /tmp/ptq_fashion.json

The W4A4 student of configs/fashion_resnet.py (the cached ResNet-8 teacher), its activation
ranges calibrated (EMA of batch min/max, 100 batches of 64, as in experiments/ablation_fashion.py)
on the two sources of that table, drawn exactly as there:
  real:  ris_jax.real_finetune's batches ('train' split, seeded permutation, sorted indices);
  noise: experiments/ablation.noise_ptq's N(0, 1) images in the normalized input space.
Prints JSON lines: sanity checks of the real images (normalization: pixel mean/std, teacher
top-1 on the calibration images), top-1 after 1, 3, 10, 30, 100 batches, the per-layer
activation maxima of both sources, top-1 with the real ranges' maxima scaled by α, top-1 with
the real ranges but one layer's from the noise calibration, and top-1 at W8A4 and W4A8 (which
of weights / activations carries the gap). Top-1 on the 10,000 test images.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

CHECKPOINTS = (1, 3, 10, 30, 100)


def real_batches(arrays, seed: int, n: int, batch: int):
  """ris_jax.real_finetune's calibration batches (its first `n` steps)."""
  rng = np.random.RandomState(seed)
  per_epoch = len(arrays['label']) // batch
  for i in range(n):
    if i % per_epoch == 0:
      order = rng.permutation(len(arrays['label']))
    sel = np.sort(order[(i % per_epoch) * batch:(i % per_epoch + 1) * batch])
    yield arrays['image'][sel], arrays['label'][sel]


def noise_batches(seed: int, n: int, batch: int, shape):
  """experiments/ablation.noise_ptq's calibration batches."""
  import jax
  key = jax.random.PRNGKey(seed)
  for i in range(n):
    yield np.asarray(jax.random.normal(jax.random.fold_in(key, i), (batch,) + tuple(shape))), None


def his(ranges):
  from flax import traverse_util
  flat = traverse_util.flatten_dict(ranges)
  return {'/'.join(k[:-2]) or 'root': round(float(v), 3) for k, v in sorted(flat.items()) if k[-1] == 'hi'}


def scale_ranges(ranges, alpha):
  from flax import traverse_util
  flat = traverse_util.flatten_dict(ranges)
  return traverse_util.unflatten_dict({k: v * alpha if k[-1] == 'hi' else v for k, v in flat.items()})


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--seeds', default='0,1,2')
  parser.add_argument('--alphas', default='0.8,1.0,1.25,1.5,2.0')
  args = parser.parse_args()
  import jax
  from flax import traverse_util
  from configs import fashion_resnet
  from ris_jax import data, evaluation, student, teacher, train
  config = fashion_resnet.get_config('w4a4')
  spec, t_module, t_vars = teacher.get_teacher(config)
  d = config.data
  acc = lambda m, v: round(evaluation.accuracy(m, v, d.dataset, d.split, 1000, d.data_dir), 2)
  arrays = data.load_arrays(d.dataset, 'train', d.data_dir)
  batch, steps = config.train.batch_size, config.train.calibration_steps
  print(json.dumps({'teacher_top1_test': acc(t_module, t_vars),
                    'train_images': len(arrays['label']),
                    'train_pixel_mean': round(float(arrays['image'].mean()), 4),
                    'train_pixel_std': round(float(arrays['image'].std()), 4),
                    'train_pixel_min_max': [round(float(arrays['image'].min()), 3),
                                            round(float(arrays['image'].max()), 3)]}), flush=True)
  module, init = student.make_student(spec, t_vars, train.quant_spec(config))
  step = jax.jit(lambda v, x: student.calibrate_step(module, v, x)[1])
  teacher_logits = jax.jit(lambda x: t_module.apply(t_vars, x))
  for seed in [int(s) for s in args.seeds.split(',')]:
    final = {}
    for source in ('real', 'noise'):
      batches = (real_batches(arrays, seed, steps, batch) if source == 'real'
                 else noise_batches(seed, steps, batch, spec.input_shape))
      v, curve, hits = init, {}, []
      for i, (images, labels) in enumerate(batches):
        v = step(v, images)
        if labels is not None:
          hits.append(float(np.mean(np.argmax(teacher_logits(images), -1) == labels)))
        if i + 1 in CHECKPOINTS:
          curve[i + 1] = acc(module, v)
      final[source] = v
      line = {'seed': seed, 'source': source, 'top1_after_batches': curve,
              'activation_hi': his(v['quant_ranges'])}
      if hits:
        line['teacher_top1_on_calibration_images'] = round(100 * float(np.mean(hits)), 2)
      print(json.dumps(line), flush=True)
    real_hi, noise_hi = his(final['real']['quant_ranges']), his(final['noise']['quant_ranges'])
    print(json.dumps({'seed': seed, 'hi_ratio_real_over_noise':
                      {k: round(real_hi[k] / noise_hi[k], 2) for k in real_hi}}), flush=True)
    scaled = {a: acc(module, {**final['real'], 'quant_ranges': scale_ranges(
        final['real']['quant_ranges'], float(a))}) for a in args.alphas.split(',')}
    print(json.dumps({'seed': seed, 'source': 'real', 'top1_with_hi_scaled_by': scaled}), flush=True)
    swapped = {}
    for layer in real_hi:  # the real ranges, one layer's taken from the noise calibration
      ranges = traverse_util.flatten_dict(final['real']['quant_ranges'])
      noise = traverse_util.flatten_dict(final['noise']['quant_ranges'])
      for k in ranges:
        if '/'.join(k[:-2]) == layer:
          ranges[k] = noise[k]
      swapped[layer] = acc(module, {**final['real'], 'quant_ranges': traverse_util.unflatten_dict(ranges)})
    print(json.dumps({'seed': seed, 'source': 'real', 'top1_with_one_layer_from_noise': swapped}),
          flush=True)
    for w_bits, a_bits in ((8, 4), (4, 8)):
      c = fashion_resnet.get_config('w4a4')
      c.quant.w_bits, c.quant.a_bits = w_bits, a_bits
      m, v0 = student.make_student(spec, t_vars, train.quant_spec(c))
      out = {}
      for source in ('real', 'noise'):
        batches = (real_batches(arrays, seed, steps, batch) if source == 'real'
                   else noise_batches(seed, steps, batch, spec.input_shape))
        out[source] = acc(m, student.calibrate(m, v0, (x for x, _ in batches)))
      print(json.dumps({'seed': seed, 'bits': f'w{w_bits}a{a_bits}', 'top1': out}), flush=True)


if __name__ == '__main__':
  main()
