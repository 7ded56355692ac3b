"""Image classifiers.  Every model starts with `Normalize`, so data and triggers live in [0,1] pixel space.

Builders are registered in MODELS and take (in_channels, num_classes, mean, std, image_size).  Nothing is
downloaded: torchvision and timm models are built with random weights; a local weight file can be loaded with
the task config's `init_weights` (safetensors or a weights-only torch file).

Small inputs (<= 64 px: CIFAR-10, GTSRB, Tiny-ImageNet, the embedded digits) use the usual CIFAR adaptations of
the ImageNet architectures, as BackdoorBench and the FIP paper's CIFAR models do: ResNet's 7x7/2 stem and
max-pool become a 3x3/1 stem; VGG's 7x7 pooling and 4096-wide classifier become global pooling and one linear
layer; MobileNetV2's first stride-2 convolution becomes stride 1; DeiT-tiny uses 4x4 patches.  At ImageNet
size (> 64 px) every model is the unmodified torchvision / timm architecture.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.registries import MODELS


class Normalize(nn.Module):
    """(x - mean) / std per channel; buffers, so they travel with the weights and are never tuned."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [B,C,H,W]
        return (x - self.mean) / self.std


def _conv_bn(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


SMALL_INPUT = 64  # at or below this side length the CIFAR adaptations apply


@MODELS.register("small_cnn")
def small_cnn(in_channels: int, num_classes: int, mean: Sequence[float], std: Sequence[float],
              image_size: int = 32) -> nn.Module:
    """Three conv-BN-ReLU blocks (32-64-128) with two 2x poolings, global average pool, two linear layers."""
    return nn.Sequential(
        Normalize(mean, std),
        *_conv_bn(in_channels, 32),
        *_conv_bn(32, 64), nn.MaxPool2d(2),
        *_conv_bn(64, 128), nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),  # [B,128]
        nn.Linear(128, 128), nn.ReLU(inplace=True),
        nn.Linear(128, num_classes),
    )


class PreActBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = (nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + skip


class PreActResNet18(nn.Module):
    """He et al. 2016 pre-activation ResNet-18, CIFAR variant (3x3 stem, no max-pool), as used by the FIP
    paper and BackdoorBench for 32x32 images."""

    def __init__(self, in_channels: int, num_classes: int, mean: Sequence[float], std: Sequence[float],
                 image_size: int = 32):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        layers, cin = [], 64
        for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            layers += [PreActBlock(cin, cout, stride), PreActBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(512)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [B,C,H,W] in [0,1]
        out = self.layers(self.conv1(self.normalize(x)))
        out = F.adaptive_avg_pool2d(F.relu(self.bn(out)), 1).flatten(1)  # [B,512]
        return self.linear(out)


MODELS.register("preact_resnet18")(PreActResNet18)


def _first_conv(conv: nn.Conv2d, in_channels: int, kernel: int | None = None, stride: int | None = None) -> nn.Conv2d:
    """A fresh replacement of `conv` with another input-channel count, kernel or stride (same bias choice)."""
    k = kernel or conv.kernel_size[0]
    return nn.Conv2d(in_channels, conv.out_channels, k, stride or conv.stride[0], padding=k // 2,
                     bias=conv.bias is not None)


def _resnet(name: str):
    def build(in_channels: int, num_classes: int, mean: Sequence[float], std: Sequence[float],
              image_size: int = 224) -> nn.Module:
        import torchvision

        net = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
        if image_size <= SMALL_INPUT:
            net.conv1, net.maxpool = _first_conv(net.conv1, in_channels, kernel=3, stride=1), nn.Identity()
        elif in_channels != 3:
            net.conv1 = _first_conv(net.conv1, in_channels)
        return nn.Sequential(Normalize(mean, std), net)

    build.__doc__ = f"torchvision {name} (He et al. 2016); CIFAR stem at <= {SMALL_INPUT} px."
    return build


MODELS.register("resnet18")(_resnet("resnet18"))
MODELS.register("resnet50")(_resnet("resnet50"))


@MODELS.register("vgg16_bn")
def vgg16_bn(in_channels: int, num_classes: int, mean: Sequence[float], std: Sequence[float],
             image_size: int = 224) -> nn.Module:
    """torchvision VGG-16 with BatchNorm (Simonyan & Zisserman 2015); global pooling + one linear layer at
    <= 64 px (the CIFAR VGG; below 32 px the fifth max-pool is dropped), the 4096-wide classifier at ImageNet size."""
    import torchvision

    net = torchvision.models.vgg16_bn(weights=None, num_classes=num_classes)
    if in_channels != 3:
        net.features[0] = _first_conv(net.features[0], in_channels)
    if image_size < 32:  # five 2x poolings need >= 32 px; below that the last one is dropped
        net.features[-1] = nn.Identity()
    if image_size <= SMALL_INPUT:
        net.avgpool = nn.AdaptiveAvgPool2d(1)  # [B,512,1,1]
        net.classifier = nn.Linear(512, num_classes)
    return nn.Sequential(Normalize(mean, std), net)


@MODELS.register("mobilenet_v2")
def mobilenet_v2(in_channels: int, num_classes: int, mean: Sequence[float], std: Sequence[float],
                 image_size: int = 224) -> nn.Module:
    """torchvision MobileNetV2 (Sandler et al. 2018); first convolution at stride 1 at <= 64 px."""
    import torchvision

    net = torchvision.models.mobilenet_v2(weights=None, num_classes=num_classes)
    first = net.features[0][0]
    if image_size <= SMALL_INPUT or in_channels != 3:
        net.features[0][0] = _first_conv(first, in_channels, stride=1 if image_size <= SMALL_INPUT else None)
    return nn.Sequential(Normalize(mean, std), net)


@MODELS.register("deit_tiny")
def deit_tiny(in_channels: int, num_classes: int, mean: Sequence[float], std: Sequence[float],
              image_size: int = 224) -> nn.Module:
    """timm DeiT-tiny (Touvron et al. 2021), random init; 4x4 patches at <= 64 px (e.g. 64 tokens at 32 px),
    16x16 at ImageNet size.  The side length must be a multiple of the patch size."""
    import timm

    patch = 4 if image_size <= SMALL_INPUT else 16
    if image_size % patch:
        raise ValueError(f"deit_tiny needs an image side divisible by its patch size {patch}, got {image_size}")
    net = timm.create_model("deit_tiny_patch16_224", pretrained=False, img_size=image_size, patch_size=patch,
                            in_chans=in_channels, num_classes=num_classes)
    for m in net.modules():  # explicit softmax attention: the fused kernel has no second derivative, which
        if hasattr(m, "fused_attn"):  # FIP's trace term, I-BAU and the sharpness figures need
            m.fused_attn = False
    return nn.Sequential(Normalize(mean, std), net)
