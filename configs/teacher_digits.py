"""The offline teacher: ResNet-20 layout on sklearn's 8×8 digits resized to 16×16 (1 channel).

    python -m ris_jax.main --config configs/teacher_digits.py --workdir /tmp/teacher_digits

Writes W/teacher (a converted-model directory) and W/teacher_results.json; about a minute
on 2 CPU cores, ≥ 97% on the held-out digits test split (360 images).
"""
import ml_collections

from configs import default


def get_config():
  config = default.get_config()
  config.mode = 'train_teacher'
  config.teacher.arch = 'resnet20_digits'
  config.data.dataset = 'digits'
  return config
