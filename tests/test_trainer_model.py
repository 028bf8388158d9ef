"""The network matches the paper: exact parameter counts, layer shapes, LRN settings and the section-5 init."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainer.model import LRN_PARAMS, build_model, count_parameters


@pytest.mark.parametrize("classes, expected", [(1000, 62_378_344), (10, 58_322_314)])
def test_exact_parameter_counts(classes, expected):
    assert count_parameters(build_model("alexnet", classes)) == expected


def test_layer_shapes_follow_the_paper_on_227():
    model = build_model("alexnet", 1000).eval()
    shapes = {}
    x = torch.zeros(1, 3, 227, 227)
    for name, layer in model.features.named_children():
        x = layer(x)
        shapes[name] = tuple(x.shape[1:])
    assert shapes["conv1"] == (96, 55, 55)
    assert shapes["pool1"] == (96, 27, 27)
    assert shapes["conv2"] == (256, 27, 27)
    assert shapes["pool2"] == (256, 13, 13)
    assert shapes["conv3"] == (384, 13, 13) and shapes["conv4"] == (384, 13, 13)
    assert shapes["pool5"] == (256, 6, 6)
    assert [type(m) for m in model.classifier] == [nn.Dropout, nn.Linear, nn.ReLU, nn.Dropout, nn.Linear, nn.ReLU, nn.Linear]
    assert model.classifier.fc6.out_features == 4096 and model.classifier.fc8.out_features == 1000
    assert model.classifier.drop6.p == 0.5 and model.classifier.drop7.p == 0.5


@pytest.mark.parametrize("crop", [224, 227, 96])
@pytest.mark.parametrize("arch", ["alexnet", "alexnet-bn"])
def test_crops_work_and_output_has_one_logit_per_class(arch, crop):
    model = build_model(arch, 7, width=0.0625).eval()
    assert model(torch.randn(2, 3, crop, crop)).shape == (2, 7)


def test_lrn_parameters_and_positions():
    model = build_model("alexnet", 10)
    lrns = {n: m for n, m in model.features.named_children() if isinstance(m, nn.LocalResponseNorm)}
    assert list(lrns) == ["lrn1", "lrn2"]
    for m in lrns.values():
        assert (m.size, m.alpha, m.beta, m.k) == (LRN_PARAMS["size"], 1e-4, 0.75, 2.0)
    names = [n for n, _ in model.features.named_children()]
    assert names.index("lrn1") == names.index("relu1") + 1 and names.index("pool1") == names.index("lrn1") + 1


def test_paper_init():
    model = build_model("alexnet", 1000)
    for name, module in model.named_modules():
        short = name.rsplit(".", 1)[-1]
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            w = module.weight.detach()
            assert abs(w.mean().item()) < 1e-3 and abs(w.std().item() - 0.01) < 5e-4, name
            expected_bias = 1.0 if short in ("conv2", "conv4", "conv5", "fc6", "fc7") else 0.0
            assert torch.all(module.bias == expected_bias), name


def test_bn_variant_has_batchnorm_no_lrn_and_kaiming_convs():
    model = build_model("alexnet-bn", 10)
    kinds = {type(m) for m in model.modules()}
    assert nn.BatchNorm2d in kinds and nn.LocalResponseNorm not in kinds
    conv1 = model.features.conv1
    fan_out = conv1.out_channels * 11 * 11
    assert conv1.bias is None
    assert abs(conv1.weight.std().item() - (2 / fan_out) ** 0.5) < 0.1 * (2 / fan_out) ** 0.5


def test_width_scales_channels():
    model = build_model("alexnet", 10, width=0.5)
    assert model.features.conv1.out_channels == 48 and model.classifier.fc6.out_features == 2048


def test_bad_arch_is_named():
    with pytest.raises(ValueError, match="vgg"):
        build_model("vgg", 10)
