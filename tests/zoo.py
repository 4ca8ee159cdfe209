"""Ordinary model architectures, written from torch.nn, for the model-zoo tests.

Small widths keep the Jacobians quick; the structure is the published one (ResNet-18's
BasicBlocks in four stages of two, MobileNetV3-small's inverted residuals with
squeeze-excitation and hardswish). Every builder returns a float64 module in eval mode
and an example input.

>>> model, x = resnet18()
>>> model(x).shape
torch.Size([1, 10])
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "Branches",
    "GRUModel",
    "LSTMModel",
    "TransformerModel",
    "bn_cnn",
    "gpt2",
    "mobilenet_v3_small",
    "resnet18",
    "sequence_models",
]

IMAGE = (1, 3, 16, 16)
"""One small image: ResNet-18 and MobileNetV3 downsample it to 2×2 and 1×1."""


def _ready(model: nn.Module, *shape: int) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = model.double().eval()
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 1.5)
    return model, torch.randn(*shape, dtype=torch.float64)


class BasicBlock(nn.Module):
    """ResNet's two 3×3 convolutions with BatchNorm and a (projected) shortcut."""

    def __init__(self, inputs: int, outputs: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)
        self.shortcut = nn.Sequential()
        if stride != 1 or inputs != outputs:
            self.shortcut = nn.Sequential(
                nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18: a stem, four stages of two BasicBlocks, global pooling, a classifier."""

    def __init__(self, width: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        stages, inputs = [], width
        for stage in range(4):
            outputs = width * 2**stage
            stride = 1 if stage == 0 else 2
            stages += [BasicBlock(inputs, outputs, stride), BasicBlock(outputs, outputs, 1)]
            inputs = outputs
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inputs, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.stages(self.stem(x))), 1))


def resnet18() -> tuple[nn.Module, torch.Tensor]:
    """ResNet-18 (width 8) and one 16×16 image."""
    return _ready(ResNet18(), *IMAGE)


def _divisible(value: float, divisor: int = 8) -> int:
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class SqueezeExcitation(nn.Module):
    """Channel attention: pool, squeeze, excite, hard-sigmoid gate."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        squeezed = _divisible(channels // 4)
        self.fc1 = nn.Conv2d(channels, squeezed, 1)
        self.fc2 = nn.Conv2d(squeezed, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = nn.functional.adaptive_avg_pool2d(x, 1)
        scale = nn.functional.hardsigmoid(self.fc2(torch.relu(self.fc1(scale))))
        return x * scale


def _conv_bn(inputs: int, outputs: int, kernel: int, stride: int, groups: int, act: str) -> list:
    layers: list[nn.Module] = [
        nn.Conv2d(inputs, outputs, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(outputs),
    ]
    if act:
        layers.append(nn.Hardswish() if act == "HS" else nn.ReLU())
    return layers


class InvertedResidual(nn.Module):
    """Expand (1×1), depthwise (k×k), optional squeeze-excitation, project (1×1)."""

    def __init__(
        self, inputs: int, kernel: int, expanded: int, outputs: int, se: bool, act: str, stride: int
    ) -> None:
        super().__init__()
        self.residual = stride == 1 and inputs == outputs
        layers: list[nn.Module] = []
        if expanded != inputs:
            layers += _conv_bn(inputs, expanded, 1, 1, 1, act)
        layers += _conv_bn(expanded, expanded, kernel, stride, expanded, act)
        if se:
            layers.append(SqueezeExcitation(expanded))
        layers += _conv_bn(expanded, outputs, 1, 1, 1, "")
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.residual else out


SMALL_CONFIG = [  # kernel, expanded, outputs, squeeze-excitation, activation, stride
    (3, 16, 16, True, "RE", 2),
    (3, 72, 24, False, "RE", 2),
    (3, 88, 24, False, "RE", 1),
    (5, 96, 40, True, "HS", 2),
    (5, 240, 40, True, "HS", 1),
    (5, 240, 40, True, "HS", 1),
    (5, 120, 48, True, "HS", 1),
    (5, 144, 48, True, "HS", 1),
    (5, 288, 96, True, "HS", 2),
    (5, 576, 96, True, "HS", 1),
    (5, 576, 96, True, "HS", 1),
]


class MobileNetV3Small(nn.Module):
    """MobileNetV3-small (Howard et al. 2019, table 2) with a width multiplier."""

    def __init__(self, width: float = 0.25, classes: int = 10) -> None:
        super().__init__()
        stem = _divisible(16 * width)
        layers: list[nn.Module] = [*_conv_bn(3, stem, 3, 2, 1, "HS")]
        inputs = stem
        for kernel, expanded, outputs, se, act, stride in SMALL_CONFIG:
            expanded, outputs = _divisible(expanded * width), _divisible(outputs * width)
            layers.append(InvertedResidual(inputs, kernel, expanded, outputs, se, act, stride))
            inputs = outputs
        last = 6 * inputs
        layers += _conv_bn(inputs, last, 1, 1, 1, "HS")
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(last, 32), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(32, classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(pooled, 1))


def mobilenet_v3_small() -> tuple[nn.Module, torch.Tensor]:
    """MobileNetV3-small (width 0.25) and one 16×16 image."""
    return _ready(MobileNetV3Small(), *IMAGE)


def bn_cnn() -> tuple[nn.Module, torch.Tensor]:
    """Two conv-BatchNorm-ReLU layers, max pooling and a classifier, and one 8×8 image."""
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 5),
    )
    return _ready(model, 1, 3, 8, 8)


class LSTMModel(nn.Module):
    """A two-layer LSTM over a (sequence, batch, features) input, its outputs projected."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(4, 6, num_layers=2)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out)


class GRUModel(nn.Module):
    """A bidirectional GRU over a (batch, sequence, features) input, its last step projected."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(4, 5, batch_first=True, bidirectional=True)
        self.head = nn.Linear(10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


class TransformerModel(nn.Module):
    """Two TransformerEncoder layers (batch first) and a projection."""

    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


class Branches(nn.Module):
    """Data-dependent control flow: which branch runs depends on the input's values."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            y = torch.tanh(self.linear(x))
        else:
            y = self.linear(x) ** 2
        steps = int(x.abs().max().item() * 2) + 1  # a data-dependent loop count
        for _ in range(steps):
            y = torch.sin(y) + x
        return y * float(x.mean())


def sequence_models() -> dict[str, tuple[nn.Module, torch.Tensor]]:
    """The LSTM (5 steps × batch 1 × 4), GRU (batch 1 × 5 steps × 4) and transformer
    (batch 1 × 4 tokens × 8) models with their example inputs."""
    return {
        "lstm": _ready(LSTMModel(), 5, 1, 4),
        "gru": _ready(GRUModel(), 1, 5, 4),
        "transformer": _ready(TransformerModel(), 1, 4, 8),
    }


class _Embedded(nn.Module):
    """A Hugging Face model called on embeddings (differentiable) rather than token ids."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(inputs_embeds=x, use_cache=False, return_dict=False)[0]


def gpt2() -> tuple[nn.Module, torch.Tensor]:
    """transformers' GPT2Model (2 layers, width 32, 2 heads) on 4 token embeddings."""
    from transformers import GPT2Config, GPT2Model

    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50, n_positions=16)
    torch.manual_seed(0)
    model = _Embedded(GPT2Model(config))
    return _ready(model, 1, 4, 32)
