"""INT8 in another runtime without data (issue 26): the akamaster ResNet-20 exported from PyTorch to
ONNX and quantized with ONNX Runtime's static quantization, calibrated on images that need no
training data, evaluated with ONNX Runtime on real images.

    python experiments/int8_runtime.py --data ../shared/data \
        --gdfq runs/cifar10_ablation/cpu3000_warm500/gdfq_seed0 \
        --ris runs/cifar10_ablation/cpu3000_warm500/ris_seed0 --num 1024 --workdir runs/int8_runtime

Calibration sources, `--num` images each:
  noise   N(0, 1) in the teacher's normalized input space (ris_jax's `ptq.source=noise`);
  gdfq    a GDFQ generator's images, `python -m ris_jax.synthesize --workdir <gdfq run> …`;
  ris     a RIS generator's images, the same from the RIS run;
  real    the first `--num` images of the validation half of cifar10_test.npz (0–4,999): the
          upper bound, real data.
Quantization: `onnxruntime.quantization.quantize_static`, QDQ format, per-channel INT8 weights,
UINT8 activations, each calibration method of `--methods` (MinMax, Entropy, Percentile).
Evaluation: top-1 on the report half (test images 5,000–9,999) with ONNX Runtime; latency per
batch of the FP32 and INT8 models (median of `--repeats`, ONNX Runtime's CPU provider). Also
ris_jax's own PTQ (`mode=ptq`, `ptq.source=npz:<the same images>`) at W8A8, W6A6 and W4A4 on
the same four sets, to see at which bit-width the calibration images start to matter.
Writes experiments/results/int8_runtime.md and int8_runtime.raw.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tables  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
RAW = 'int8_runtime'
SOURCES = ('noise', 'gdfq', 'ris', 'real')
LABELS = {'noise': 'Gaussian noise', 'gdfq': 'GDFQ generator', 'ris': 'RIS generator',
          'real': 'real images (validation half; upper bound)'}
REPORT = slice(5000, 10000)
PTQ_BITS = ('w8a8', 'w6a6', 'w4a4')


def teacher(data_dir):
  """The akamaster ResNet-20 in PyTorch (eval mode) and its input normalization."""
  import torch
  from ris_jax import convert
  from ris_jax.models import get_arch
  spec = get_arch('resnet20_akamaster')
  model = spec.torch_model().eval()
  sd = convert.read_torch_state_dict(os.path.join(data_dir, 'resnet20-12fca82f.th'))
  model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
  return model, spec.normalization


def normalize(pixels, normalization):
  """uint8 (N, H, W, C) → float32 (N, C, H, W) in the teacher's normalized space."""
  mean, std = (np.asarray(s, np.float32) for s in normalization)
  return np.ascontiguousarray(((pixels / 255.0 - mean) / std).astype(np.float32).transpose(0, 3, 1, 2))


def export_onnx(model, path):
  import torch
  x = torch.zeros(1, 3, 32, 32)
  torch.onnx.export(model, (x,), path, input_names=['input'], output_names=['logits'],
                    dynamic_axes={'input': {0: 'batch'}, 'logits': {0: 'batch'}}, opset_version=17,
                    dynamo=False)


def session(path):
  import onnxruntime as ort
  options = ort.SessionOptions()
  options.log_severity_level = 3
  return ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])


def top1(sess, images, labels, batch=500):
  pred = np.concatenate([sess.run(None, {'input': images[i:i + batch]})[0].argmax(1)
                         for i in range(0, len(images), batch)])
  return 100.0 * float(np.mean(pred == labels))


def latency_ms(sess, images, batch, repeats):
  x = images[:batch]
  sess.run(None, {'input': x})  # warm-up
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    sess.run(None, {'input': x})
    times.append(1e3 * (time.perf_counter() - t))
  return float(np.median(times))


def quantize(fp32, out, calibration, method):
  from onnxruntime import quantization as q

  class Reader(q.CalibrationDataReader):
    def __init__(self):
      self.batches = iter([{'input': calibration[i:i + 64]} for i in range(0, len(calibration), 64)])

    def get_next(self):
      return next(self.batches, None)

  q.quantize_static(fp32, out, Reader(), quant_format=q.QuantFormat.QDQ, per_channel=True,
                    activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8,
                    calibrate_method=getattr(q.CalibrationMethod, method))


def run(cmd, env):
  proc = subprocess.run([sys.executable] + cmd, cwd=REPO, env=env, capture_output=True, text=True)
  if proc.returncode:
    sys.exit(f'{shlex.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}')
  return proc.stdout


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--data', default='../shared/data')
  parser.add_argument('--gdfq', help='workdir of a GDFQ run of the akamaster ResNet-20')
  parser.add_argument('--ris', help='workdir of a RIS run of the same teacher')
  parser.add_argument('--num', type=int, default=1024, help='calibration images per source')
  parser.add_argument('--methods', default='MinMax,Entropy,Percentile')
  parser.add_argument('--workdir', default='runs/int8_runtime')
  parser.add_argument('--repeats', type=int, default=30)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--tables-only', action='store_true')
  args = parser.parse_args()
  if args.tables_only:
    write_table(*tables.load_raw(RAW))
    return
  if not (args.gdfq and args.ris):
    parser.error('--gdfq and --ris (the workdirs of the two generators) are required')
  os.makedirs(args.workdir, exist_ok=True)
  env = dict(os.environ, PYTHONPATH=REPO)
  model, normalization = teacher(args.data)
  with np.load(os.path.join(args.data, 'cifar10_test.npz')) as f:
    pixels, labels = f['images'], f['labels']
  report_x, report_y = normalize(pixels[REPORT], normalization), labels[REPORT]
  commands, sets = [], {}
  for name, run_dir in (('gdfq', args.gdfq), ('ris', args.ris)):
    path = os.path.join(args.workdir, f'{name}.npz')
    cmd = ['-m', 'ris_jax.synthesize', '--workdir', run_dir, '--num', str(args.num), '--out', path,
           '--seed', str(args.seed), '--overwrite']
    commands.append(shlex.join(['python'] + cmd))
    run(cmd, env)
    with np.load(path) as f:
      sets[name] = f['images']
  sets['real'] = pixels[:args.num]  # validation half
  np.savez(os.path.join(args.workdir, 'real.npz'), images=sets['real'], labels=labels[:args.num])
  calib = {k: normalize(v, normalization) for k, v in sets.items()}
  calib['noise'] = np.random.RandomState(args.seed).standard_normal(
      (args.num, 3, 32, 32)).astype(np.float32)
  fp32 = os.path.join(args.workdir, 'resnet20_fp32.onnx')
  export_onnx(model, fp32)
  import torch
  with torch.no_grad():
    torch_logits = model(torch.from_numpy(report_x[:256])).numpy()
  fp_sess = session(fp32)
  rows = {'fp32': {'top1_report': top1(fp_sess, report_x, report_y),
                   'max_abs_logit_diff_vs_pytorch': float(np.abs(
                       fp_sess.run(None, {'input': report_x[:256]})[0] - torch_logits).max()),
                   'latency_ms': {str(b): latency_ms(fp_sess, report_x, b, args.repeats) for b in (1, 64)}},
          'int8': {}, 'ptq': {}}
  for method in args.methods.split(','):
    for source in SOURCES:
      out = os.path.join(args.workdir, f'resnet20_int8_{source}_{method}.onnx')
      quantize(fp32, out, calib[source], method)
      sess = session(out)
      rows['int8'][f'{source}|{method}'] = {
          'top1_report': top1(sess, report_x, report_y),
          'latency_ms': {str(b): latency_ms(sess, report_x, b, args.repeats) for b in (1, 64)}}
      print(method, source, rows['int8'][f'{source}|{method}'], flush=True)
  # ris_jax's own PTQ on the same images (npz sources; the noise set as its own PTQ draws it)
  for bits in PTQ_BITS:
    for source in SOURCES:
      ptq_source = 'noise' if source == 'noise' else f"npz:{os.path.join(args.workdir, source + '.npz')}"
      workdir = os.path.join(args.workdir, 'ptq', f'{source}_{bits}')
      cmd = ['-m', 'ris_jax.main', '--config', f'configs/cifar10_akamaster.py:resnet20,{bits}',
             '--workdir', workdir, '--config.mode=ptq', f'--config.ptq.source={ptq_source}',
             '--config.ptq.clip_weights=False', f'--config.ptq.calibration_batches={args.num // 64}',
             f"--config.teacher.checkpoint={os.path.join(args.data, 'resnet20-12fca82f.th')}",
             f"--config.data.dataset=npz:{os.path.join(args.data, 'cifar10_test.npz')}",
             '--config.overwrite=True']
      commands.append(shlex.join(['python'] + cmd))
      if not os.path.isfile(os.path.join(workdir, 'results.json')):
        run(cmd, env)
      with open(os.path.join(workdir, 'results.json')) as f:
        rows['ptq'][f'{source}|{bits}'] = json.load(f)
  rows.update(num=args.num, commands=commands, methods=args.methods.split(','),
              machine='2-core CPU (AMD EPYC, AVX-512 VNNI), ONNX Runtime CPU provider')
  tables.save_raw(RAW, tables.command('int8_runtime.py'), rows)
  write_table(tables.command('int8_runtime.py'), rows)


def write_table(command, rows):
  methods = rows['methods']
  fp = rows['fp32']
  lines = ['# INT8 in ONNX Runtime without data: akamaster ResNet-20, CIFAR-10', '',
           f'Command: `{command}` (`--tables-only` rewrites this file from `{RAW}.raw.json`). '
           f"{rows['num']} calibration images per source; top-1 on the report half of "
           '`cifar10_test.npz` (test images 5,000–9,999; one image = 0.02 points). Measured on '
           f"a {rows['machine']}.", '',
           f"FP32 ONNX model: top-1 **{fp['top1_report']:.2f}**; its logits equal PyTorch's to "
           f"{fp['max_abs_logit_diff_vs_pytorch']:.1e}.", '',
           '## ONNX Runtime static quantization (QDQ, per-channel INT8 weights, UINT8 activations)', '',
           '| calibration images | ' + ' | '.join(methods) + ' |', '|---|' + '---|' * len(methods)]
  for source in SOURCES:
    lines.append(f'| {LABELS[source]} | ' + ' | '.join(
        f"{rows['int8'][f'{source}|{m}']['top1_report']:.2f}" for m in methods) + ' |')
  lat = lambda r, b: r['latency_ms'][str(b)]
  int8 = [r for r in rows['int8'].values()]
  lines += ['', '| latency per batch (median ms) | batch 1 | batch 64 |', '|---|---|---|',
            f'| FP32 | {lat(fp, 1):.2f} | {lat(fp, 64):.1f} |',
            f'| INT8 (median over the {len(int8)} models) | {np.median([lat(r, 1) for r in int8]):.2f} | '
            f'{np.median([lat(r, 64) for r in int8]):.1f} |', '',
            "## ris_jax's own PTQ on the same images (no fine-tuning, no weight clipping)", '',
            'Report-half top-1 of `mode=ptq` with `ptq.source=npz:<the set>` (noise: `ptq.source=noise`).',
            '', '| calibration images | ' + ' | '.join(b.upper() for b in PTQ_BITS) + ' |',
            '|---|' + '---|' * len(PTQ_BITS)]
  for source in SOURCES:
    lines.append(f'| {LABELS[source]} | ' + ' | '.join(
        f"{rows['ptq'][f'{source}|{b}']['top1_calibrated_report']:.2f}" for b in PTQ_BITS) + ' |')
  lines += tables.reading_lines('int8_runtime_reading.md')
  lines += ['', '## Commands', ''] + [f'- `{c}`' for c in rows['commands']]
  tables.write('int8_runtime.md', lines)


if __name__ == '__main__':
  main()
