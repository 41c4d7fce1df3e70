"""Post-training quantization (no fine-tuning) of the offline digits teacher: activation
ranges calibrated on 50 × 64 images of `ptq.source`, then greedy per-layer weight clipping by
output MSE (ris_jax/ptq.py).

    python -m ris_jax.main --config configs/ptq_digits.py:w4a8 --workdir /tmp/ptq_w4a8
    python -m ris_jax.main --config configs/ptq_digits.py:w4a8 --workdir /tmp/ptq_w4a8_ris \
        --config.ptq.source=generator:/tmp/dfkd_ris

Argument: w8a8 | w6a6 | w4a8 | w4a4 | w3a3 | w2a4. `--config.ptq.source` = noise (default) | real |
generator:<workdir of a trained run of this teacher, e.g. configs/dfkd_digits.py or demo.py>.
Results: experiments/results/ptq_digits.md (`python experiments/compression.py`).
"""
from configs import _published, default

BITS = ('w8a8', 'w6a6', 'w4a8', 'w4a4', 'w3a3', 'w2a4')


def get_config(bits='w8a8'):
  w, a, method, _ = _published.parse_arg(bits, BITS, extras=('gdfq',))
  c = default.get_config()
  c.mode = 'ptq'
  c.method = method
  c.teacher.arch = 'resnet20_digits'
  c.data.dataset = 'digits'
  c.data.eval_batch_size = 360
  c.quant.w_bits, c.quant.a_bits = w, a
  c.ptq.source = 'noise'
  return c
