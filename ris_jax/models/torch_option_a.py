"""PyTorch model of the option-A CIFAR ResNet (the state-dict layout of
akamaster/pytorch_resnet_cifar10: `conv1`, `bn1`, `layer{1,2,3}.{i}.conv1/bn1/conv2/bn2`,
`linear`), written from that layout for conversion tests and export; its ReLUs are modules
(`relu`, `layerK.i.relu1`, `layerK.i.relu2`) so that export can wrap them in fake quantizers.
Imported only where torch is needed."""
from __future__ import annotations

import torch
from torch import nn


class OptionABlock(nn.Module):
  def __init__(self, in_planes: int, planes: int, stride: int):
    super().__init__()
    self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.relu1 = nn.ReLU()
    self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.relu2 = nn.ReLU()
    self.pad = planes // 4 if (stride != 1 or in_planes != planes) else 0

  def forward(self, x):
    y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
    shortcut = x
    if self.pad:
      shortcut = nn.functional.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
    return self.relu2(y + shortcut)


class OptionAResNet(nn.Module):
  """ResNet-(6n+2) for 32×32 RGB, NCHW input."""

  def __init__(self, depth: int = 20, num_classes: int = 10):
    super().__init__()
    n = (depth - 2) // 6
    self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
    self.bn1 = nn.BatchNorm2d(16)
    self.relu = nn.ReLU()
    in_planes = 16
    for k, planes in enumerate((16, 32, 64)):
      blocks = []
      for i in range(n):
        blocks.append(OptionABlock(in_planes, planes, 2 if (i == 0 and k > 0) else 1))
        in_planes = planes
      setattr(self, f'layer{k + 1}', nn.Sequential(*blocks))
    self.linear = nn.Linear(64, num_classes)

  def forward(self, x):
    x = self.relu(self.bn1(self.conv1(x)))
    x = self.layer3(self.layer2(self.layer1(x)))
    return self.linear(torch.mean(x, dim=(2, 3)))


def resnet20(num_classes: int = 10) -> OptionAResNet:
  return OptionAResNet(20, num_classes)


def resnet56(num_classes: int = 10) -> OptionAResNet:
  return OptionAResNet(56, num_classes)
