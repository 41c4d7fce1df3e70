"""The Fashion-MNIST teacher: ResNet-8 (one unit per stage, 78k parameters) on 28×28×1.

    python -m ris_jax.main --config configs/teacher_fashion.py --workdir /tmp/teacher_fashion

Trains on the 54,000-image 'train' split (the fixed 6,000-image 'val' part is held out) and
writes W/teacher (a converted-model directory) and W/teacher/teacher_results.json.
`configs/fashion_resnet.py` trains the same teacher once on first use and caches it under
`~/.cache/ris_jax`. Needs `apt-get install -y dataset-fashion-mnist`. Measured: 3 epochs
(1,263 steps of batch 128), 89.18 % on the 10,000 test images, 391 s on the 2-core CPU while
two other training jobs shared it.
"""
from configs import default


def get_config():
  c = default.get_config()
  c.mode = 'train_teacher'
  c.teacher.arch = 'resnet8_fashion'
  c.data.dataset = 'fashion_mnist'
  c.data.eval_batch_size = 1000
  c.teacher_training.epochs = 3
  c.teacher_training.batch_size = 128
  c.teacher_training.learning_rate = 0.1
  return c
