"""Torch models for the experiments and weight transfer to/from ordered numpy dicts.

:class:`SmallCNN` is the model of both image use cases (28 x 28 x 1 input; 10 classes for UC10,
2 for UC14A)::

    conv 1->32 5x5 (+BatchNorm) -> ReLU -> maxpool 2   28 -> 24 -> 12
    conv 32->64 5x5 (+BatchNorm) -> ReLU -> maxpool 2  12 ->  8 ->  4
    flatten 64*4*4 = 1024 -> fc 96 -> ReLU -> fc num_classes

Trainable parameters: 151 466 (10 classes), 150 690 (2 classes); the BatchNorm variant adds
192 affine parameters and 194 buffer values (192 float32 running means/variances, two int64
batch counters).
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

MODEL_KINDS = ("cnn", "cnn-bn", "vit", "mlp")


class SmallCNN(nn.Module):
    """Two 5 x 5 conv layers and two fully connected layers for 1 x 28 x 28 images.

    Parameters
    ----------
    num_classes : int
        Output classes (10 for UC10, 2 for UC14A).
    batch_norm : bool
        Put a BatchNorm2d after each convolution (adds integer ``num_batches_tracked`` buffers).
    hidden : int
        Width of the first fully connected layer.
    """

    def __init__(self, num_classes: int = 10, batch_norm: bool = False, hidden: int = 96) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, kernel_size=5)
        self.bn1 = nn.BatchNorm2d(32) if batch_norm else nn.Identity()
        self.conv2 = nn.Conv2d(32, 64, kernel_size=5)
        self.bn2 = nn.BatchNorm2d(64) if batch_norm else nn.Identity()
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(64 * 4 * 4, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits, shape ``(batch, num_classes)``."""
        x = self.pool(torch.relu(self.bn1(self.conv1(x))))
        x = self.pool(torch.relu(self.bn2(self.conv2(x))))
        x = torch.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)


class TinyViT(nn.Module):
    """A small vision transformer for 1 x 28 x 28 images: LayerNorm and multi-head attention.

    7 x 7 patches -> 16 tokens of width ``dim`` (+ a class token and learned positions) ->
    ``depth`` pre-norm transformer encoder layers (``heads`` heads, MLP 2 x ``dim``) -> LayerNorm
    -> linear head on the class token. 72 074 parameters with the defaults and 10 classes.
    """

    def __init__(self, num_classes: int = 10, dim: int = 64, depth: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.patch = nn.Conv2d(1, dim, kernel_size=7, stride=7)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, 17, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits, shape ``(batch, num_classes)``."""
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], dim=1) + self.pos
        return self.head(self.norm(self.encoder(tokens))[:, 0])


class MLP(nn.Module):
    """Fully connected ReLU network ``in -> hidden[0] -> ... -> out`` (the codec benchmark's models).

    Parameters
    ----------
    sizes : sequence of int
        Layer widths including input and output, e.g. ``(64, 80, 10)``.
    """

    def __init__(self, sizes: tuple[int, ...]) -> None:
        super().__init__()
        if len(sizes) < 2 or any(s < 1 for s in sizes):
            raise ValueError(f"MLP needs at least two positive layer sizes, got {sizes}")
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(sizes)):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)
        self.sizes = tuple(sizes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits; the input is flattened first."""
        return self.net(torch.flatten(x, 1))


def make_model(kind: str = "cnn", num_classes: int = 10, seed: int = 0, **kwargs) -> nn.Module:
    """Build a model with a deterministic initialisation.

    Parameters
    ----------
    kind : {"cnn", "cnn-bn", "vit", "mlp"}
        :class:`SmallCNN`, the same with BatchNorm, :class:`TinyViT` (LayerNorm and attention),
        or :class:`MLP` (pass ``sizes``; its last width must equal ``num_classes``).
    num_classes : int
        Output classes.
    seed : int
        Initialisation seed; the global torch RNG is left untouched.
    **kwargs
        Passed to the model class (``hidden`` for the CNNs, ``sizes`` for the MLP).

    Returns
    -------
    torch.nn.Module
        float32 model on the CPU, in training mode.
    """
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; choose one of {', '.join(MODEL_KINDS)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "mlp":
            sizes = tuple(kwargs.pop("sizes", (784, 200, num_classes)))
            if sizes[-1] != num_classes:
                raise ValueError(f"MLP output width {sizes[-1]} differs from num_classes {num_classes}")
            return MLP(sizes, **kwargs)
        if kind == "vit":
            return TinyViT(num_classes=num_classes, **kwargs)
        return SmallCNN(num_classes=num_classes, batch_norm=(kind == "cnn-bn"), **kwargs)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of scalar parameters (buffers excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def get_weights(model: nn.Module) -> OrderedDict[str, np.ndarray]:
    """Copy every parameter and buffer into an ordered ``name -> numpy array`` dict (state_dict order).

    Dtypes are kept (float32 weights, int64 BatchNorm counters); the arrays are independent copies.
    """
    return OrderedDict((name, t.detach().cpu().numpy().copy()) for name, t in model.state_dict().items())


def set_weights(model: nn.Module, weights: Mapping[str, np.ndarray]) -> None:
    """Load ``weights`` (as from :func:`get_weights`) into ``model`` in place.

    Raises
    ------
    ValueError
        If names differ from the model's state_dict, or a shape or dtype does not match; the
        message names the tensor.
    """
    state = model.state_dict()
    missing = [k for k in state if k not in weights]
    unexpected = [k for k in weights if k not in state]
    if missing or unexpected:
        raise ValueError(f"weights do not fit the model: missing {missing}, unexpected {unexpected}")
    new_state = OrderedDict()
    for name, current in state.items():
        value = np.asarray(weights[name])
        if tuple(value.shape) != tuple(current.shape):
            raise ValueError(f"tensor {name!r}: shape {value.shape} != model's {tuple(current.shape)}")
        expected = torch.empty(0, dtype=current.dtype).numpy().dtype
        if value.dtype != expected:
            raise ValueError(f"tensor {name!r}: dtype {value.dtype} != model's {expected}")
        new_state[name] = torch.from_numpy(np.ascontiguousarray(value).copy())
    model.load_state_dict(new_state, strict=True)


__all__ = ["MLP", "MODEL_KINDS", "SmallCNN", "TinyViT", "count_parameters", "get_weights", "make_model", "set_weights"]
