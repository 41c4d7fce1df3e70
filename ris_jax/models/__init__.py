"""Architecture registry: a Flax module definition plus its PyTorch (pytorchcv) name mapping.

Adding an architecture = a module definition (conv/dense/act/norm injected through `Ops`) and
an `ArchSpec` entry here.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
from typing import Callable, Tuple

from ris_jax.data import NORMALIZATION
from ris_jax.layers import Ops
from ris_jax.models.mobilenetv2 import MobileNetV2
from ris_jax.models.resnet import ResNet
from ris_jax.models.resnet_cifar import CifarResNet, OptionAResNet

_LEAF_TO_TORCH = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias',
                  'mean': 'running_mean', 'var': 'running_var'}


# A teacher's input normalization, per-channel (mean, std) on 0..1 pixels: preprocessing
# belongs to the teacher (ArchSpec.normalization), so one dataset can feed teachers trained
# with different statistics; the datasets' conventional statistics live in `data`.
CIFAR10_STATS, CIFAR100_STATS, IMAGENET_STATS, DIGITS_STATS, FASHION_MNIST_STATS = (
    NORMALIZATION[d] for d in ('cifar10', 'cifar100', 'imagenet2012', 'digits', 'fashion_mnist'))


def pytorchcv_key(path: Tuple[str, ...]) -> str:
  """Flax variable path → pytorchcv state-dict key.

  ('stage1_unit2', 'body', 'conv1', 'bn', 'mean') → 'features.stage1.unit2.body.conv1.bn.running_mean';
  the classifier ('output', …) has no 'features.' prefix.
  """
  *modules, leaf = path
  modules = [m.replace('_unit', '.unit') for m in modules]
  prefix = [] if modules[0] == 'output' else ['features']
  return '.'.join(prefix + modules + [_LEAF_TO_TORCH[leaf]])


def pytorchcv_activation(path: Tuple[str, ...]) -> str:
  """Flax Activation path → pytorchcv module name: ('stage1_unit1', 'Activation_0') →
  'features.stage1.unit1.activ' (ConvBlock.activ, ResUnit.activ)."""
  *parent, own = path
  if own != 'Activation_0':
    raise ValueError(f"cannot map activation {'/'.join(path)} to a pytorchcv module "
                     '(expected one Activation per block)')
  return pytorchcv_key(tuple(parent) + ('kernel',))[:-len('.weight')] + '.activ'


def option_a_key(path: Tuple[str, ...]) -> str:
  """Flax path → akamaster state-dict key: ('layer2_0', 'bn1', 'var') → 'layer2.0.bn1.running_var';
  an activation module path (no leaf) → its torch module name ('layer2_0', 'relu1') → 'layer2.0.relu1'."""
  *modules, leaf = path
  names = [m.replace('_', '.') for m in modules]
  if leaf not in _LEAF_TO_TORCH:
    return '.'.join(names + [leaf])
  return '.'.join(names + [_LEAF_TO_TORCH[leaf]])


@dataclasses.dataclass(frozen=True)
class ArchSpec:
  """`build(ops)` makes the Flax module; `torch_model()` the matching PyTorch model (random
  weights; used by tests and export); `torch_key` maps Flax paths to state-dict keys and
  `torch_activation` Flax activation paths to torch module names; `normalization` is the
  per-channel (mean, std) of the teacher's input (0..1 pixels), whatever the dataset."""
  name: str
  build: Callable[[Ops], object]
  torch_factory: str  # 'module:function'
  torch_kwargs: Tuple[Tuple[str, object], ...] = ()
  image_size: int = 32
  in_channels: int = 3
  num_classes: int = 10
  normalization: Tuple[Tuple[float, ...], Tuple[float, ...]] = CIFAR10_STATS
  torch_key: Callable[[Tuple[str, ...]], str] = pytorchcv_key
  torch_activation: Callable[[Tuple[str, ...]], str] = pytorchcv_activation

  def module(self, ops: Ops = Ops()):
    return self.build(ops)

  def torch_model(self):
    """The PyTorch model of this architecture (pytorchcv; never imports torchvision). Its
    fixed-size final average pool becomes a global one (the same function at the native input
    size; needed at others, e.g. 16×16 digits)."""
    import torch
    module_name, fn = self.torch_factory.split(':')
    model = getattr(importlib.import_module(module_name), fn)(**dict(self.torch_kwargs))
    if isinstance(getattr(getattr(model, 'features', None), 'final_pool', None),
                  torch.nn.AvgPool2d):
      model.features.final_pool = torch.nn.AdaptiveAvgPool2d(1)
    return model

  @property
  def input_shape(self):
    return (self.image_size, self.image_size, self.in_channels)


def _cifar(depth, classes):
  return lambda ops: CifarResNet(depth=depth, num_classes=classes, ops=ops)


ARCHS = {}


def register(spec: ArchSpec) -> ArchSpec:
  ARCHS[spec.name] = spec
  return spec


for _depth in (20, 56):
  for _classes in (10, 100):
    register(ArchSpec(f'resnet{_depth}_cifar{_classes}', _cifar(_depth, _classes),
                      f'pytorchcv.models.resnet_cifar:resnet{_depth}_cifar{_classes}',
                      num_classes=_classes,
                      normalization=CIFAR10_STATS if _classes == 10 else CIFAR100_STATS))
  # akamaster/pytorch_resnet_cifar10 (option-A shortcut), trained with ImageNet statistics.
  register(ArchSpec(f'resnet{_depth}_akamaster',
                    lambda ops, d=_depth: OptionAResNet(depth=d, num_classes=10, ops=ops),
                    f'ris_jax.models.torch_option_a:resnet{_depth}',
                    normalization=IMAGENET_STATS, torch_key=option_a_key,
                    torch_activation=option_a_key))
# The offline teacher: ResNet-20 layout on 16×16 grayscale digits.
register(ArchSpec('resnet20_digits', _cifar(20, 10), 'pytorchcv.models.resnet_cifar:resnet20_cifar10',
                  (('in_channels', 1), ('in_size', (16, 16))), image_size=16, in_channels=1,
                  normalization=DIGITS_STATS))
# Small offline models: ResNet-8 (one unit per stage; the data-free distillation student
# and the Fashion-MNIST teacher) and ResNet-20 on 28×28 grayscale Fashion-MNIST.
for _name, _depth, _size in (('resnet8_digits', 8, 16), ('resnet8_fashion', 8, 28),
                             ('resnet20_fashion', 20, 28)):
  register(ArchSpec(_name, _cifar(_depth, 10), 'pytorchcv.models.resnet_cifar:get_resnet_cifar',
                    (('num_classes', 10), ('blocks', _depth), ('bottleneck', False),
                     ('in_channels', 1), ('in_size', (_size, _size))),
                    image_size=_size, in_channels=1,
                    normalization=DIGITS_STATS if _size == 16 else FASHION_MNIST_STATS))
register(ArchSpec('resnet18', lambda ops: ResNet(depth=18, ops=ops),
                  'pytorchcv.models.resnet:resnet18', image_size=224, num_classes=1000,
                  normalization=IMAGENET_STATS))
register(ArchSpec('resnet50', lambda ops: ResNet(depth=50, ops=ops),
                  'pytorchcv.models.resnet:resnet50', image_size=224, num_classes=1000,
                  normalization=IMAGENET_STATS))
register(ArchSpec('mobilenetv2_w1', lambda ops: MobileNetV2(width_scale=1.0, ops=ops),
                  'pytorchcv.models.mobilenetv2:mobilenetv2_w1', image_size=224, num_classes=1000,
                  normalization=IMAGENET_STATS))


def get_arch(name: str) -> ArchSpec:
  if name not in ARCHS:
    raise KeyError(f"unknown arch '{name}'; known: {', '.join(sorted(ARCHS))}")
  return ARCHS[name]
