"""AlexNet in the paper's single-GPU form (section 3), and a BatchNorm variant that trains at small scale.

`alexnet`: 96-256-384-384-256 convs, LRN after conv1 and conv2, overlapping 3/2 max pools, dropout 0.5 on
fc6/fc7 and the paper's init (section 5). 62,378,344 parameters for 1000 classes, 58,322,314 for 10.
`alexnet-bn`: BatchNorm instead of LRN (convs lose their bias), kaiming init. Known to learn where the paper's
N(0, 0.01) init sits at chance on small synthetic data without careful lr tuning (trainer/chance.py says so).
Both end in an adaptive average pool to 6x6, so 224 and 227 crops (and smaller ones in tests) all work.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from trainer.config import ARCHS

__all__ = ["AlexNet", "build_model", "LRN_PARAMS", "count_parameters"]

# Section 3.3: k=2, n=5, alpha=1e-4, beta=0.75.
LRN_PARAMS = dict(size=5, alpha=1e-4, beta=0.75, k=2.0)
# (out channels, kernel, stride, padding, pool after) for conv1..conv5.
CONVS = ((96, 11, 4, 0, True), (256, 5, 1, 2, True), (384, 3, 1, 1, False), (384, 3, 1, 1, False), (256, 3, 1, 1, True))
# Section 5: biases 1 in conv2, conv4, conv5 and the hidden fc layers (accelerates early learning via positive ReLU input).
ONE_BIAS = ("conv2", "conv4", "conv5", "fc6", "fc7")


def _scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


class AlexNet(nn.Module):
    def __init__(self, num_classes: int = 1000, *, batch_norm: bool = False, width: float = 1.0, dropout: float = 0.5):
        super().__init__()
        self.batch_norm = batch_norm
        layers: list[tuple[str, nn.Module]] = []
        in_ch = 3
        for i, (out, kernel, stride, pad, pool) in enumerate(CONVS, start=1):
            out = _scaled(out, width)
            layers.append((f"conv{i}", nn.Conv2d(in_ch, out, kernel, stride, pad, bias=not batch_norm)))
            if batch_norm:
                layers.append((f"bn{i}", nn.BatchNorm2d(out)))
            layers.append((f"relu{i}", nn.ReLU(inplace=True)))
            if i <= 2 and not batch_norm:
                layers.append((f"lrn{i}", nn.LocalResponseNorm(**LRN_PARAMS)))
            if pool:
                layers.append((f"pool{i}", nn.MaxPool2d(kernel_size=3, stride=2)))
            in_ch = out
        self.features = nn.Sequential(OrderedDict(layers))
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        hidden = _scaled(4096, width)
        self.classifier = nn.Sequential(
            OrderedDict(
                [
                    ("drop6", nn.Dropout(dropout)),
                    ("fc6", nn.Linear(in_ch * 36, hidden)),
                    ("relu6", nn.ReLU(inplace=True)),
                    ("drop7", nn.Dropout(dropout)),
                    ("fc7", nn.Linear(hidden, hidden)),
                    ("relu7", nn.ReLU(inplace=True)),
                    ("fc8", nn.Linear(hidden, num_classes)),
                ]
            )
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for name, module in self.named_modules():
            short = name.rsplit(".", 1)[-1]
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                if self.batch_norm:
                    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                    if isinstance(module, nn.Linear):
                        nn.init.normal_(module.weight, 0.0, 0.01)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
                else:
                    nn.init.normal_(module.weight, 0.0, 0.01)
                    nn.init.constant_(module.bias, 1.0 if short in ONE_BIAS else 0.0)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def build_model(arch: str, num_classes: int, *, width: float = 1.0) -> AlexNet:
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {ARCHS}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    return AlexNet(num_classes, batch_norm=(arch == "alexnet-bn"), width=width)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
