"""Model registry: build_model(name, num_classes, ...) and the checks that a model fits a dataset.

Every model returns raw logits (nn.CrossEntropyLoss everywhere) and none has BatchNorm, so a model's
parameters are its whole trainable state.
"""
from torch import nn

from .cnncifar import CNNCifar
from .mlp import MLP
from .mnistnet import MnistNet
from .resnet import ResNet18
from .transformer import TransformerModel
from .vgg import VGG11Star

__all__ = ["MODEL_NAMES", "build_model", "is_language_model", "check_model_fits",
           "count_parameters", "describe_model"]

MODEL_NAMES: tuple[str, ...] = ("mlp", "mnistnet", "cnncifar", "vgg", "resnet", "transformer")
LANGUAGE_MODELS = frozenset({"transformer"})

# Image shapes (channels, side) each image model takes; None: any shape (the MLP sizes its input layer).
_MNIST_SHAPE, _CIFAR_SHAPE = (1, 28), (3, 32)
ACCEPTED_SHAPES: dict[str, tuple[tuple[int, int], ...] | None] = {
    "mlp": None,
    "mnistnet": (_MNIST_SHAPE,),
    "cnncifar": (_CIFAR_SHAPE,),
    "vgg": (_CIFAR_SHAPE,),  # five 2x2 pools need 32x32 (28x28 would vanish at the fifth)
    "resnet": (_MNIST_SHAPE, _CIFAR_SHAPE),  # both reach the 4x4 map the final average pool expects
}
_DATASETS_OF_SHAPE = {_MNIST_SHAPE: "mnist, fmnist, emnist", _CIFAR_SHAPE: "cifar10, cifar100"}


def _check_name(name: str) -> None:
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}")


def _shape_text(shape: tuple[int, int]) -> str:
    channels, side = shape
    return f"{channels}x{side}x{side} ({_DATASETS_OF_SHAPE[shape]})"


def is_language_model(name: str) -> bool:
    """True for models of token sequences (text datasets), False for image classifiers."""
    _check_name(name)
    return name in LANGUAGE_MODELS


def check_model_fits(name: str, *, text: bool, in_channels: int = 1, image_size: int = 28) -> None:
    """Raise ValueError (one line) unless model `name` can take the dataset's input.

    text: whether the dataset is a token stream; in_channels x image_size x image_size: its image shape.
    """
    _check_name(name)
    if is_language_model(name) != text:
        wanted = [m for m in MODEL_NAMES if is_language_model(m) == text]
        kind, other = ("a language model", "image") if is_language_model(name) else ("an image model", "text")
        raise ValueError(f"model {name!r} is {kind} and cannot train on {other} data; "
                         f"for {'text' if text else 'image'} datasets choose one of: {', '.join(wanted)}")
    if text:
        return
    if in_channels < 1 or image_size < 1:
        raise ValueError(f"image shape must be positive, got {in_channels}x{image_size}x{image_size}")
    accepted = ACCEPTED_SHAPES[name]
    if accepted is not None and (in_channels, image_size) not in accepted:
        raise ValueError(f"model {name!r} takes {' or '.join(map(_shape_text, accepted))} images, "
                         f"not {in_channels}x{image_size}x{image_size}")


def build_model(name: str, num_classes: int, *, in_channels: int = 1, image_size: int = 28) -> nn.Module:
    """A freshly initialised model (from the global torch RNG: seed it first for reproducible weights).

    num_classes: class count for image models, vocabulary size for "transformer" (whose own sizes are
    fixed by the paper: 2 layers, emsize 200, 2 heads, nhid 200, dropout 0.2). in_channels, image_size:
    the image shape (ignored by the transformer).
    """
    check_model_fits(name, text=is_language_model(name), in_channels=in_channels, image_size=image_size)
    if num_classes < 2:
        what = "vocabulary size" if is_language_model(name) else "class count"
        raise ValueError(f"model {name!r} needs a {what} of at least 2, got {num_classes}")
    if name == "mlp":
        return MLP(in_channels * image_size * image_size, num_classes)
    if name == "mnistnet":
        return MnistNet(num_classes)
    if name == "cnncifar":
        return CNNCifar(num_classes)
    if name == "vgg":
        return VGG11Star(num_classes)
    if name == "resnet":
        return ResNet18(num_classes, in_channels=in_channels)
    assert name == "transformer"
    return TransformerModel(num_classes)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def describe_model(model: nn.Module) -> str:
    """One line for the log, e.g. 'MLP: 199,210 parameters (0.76 MB as float32)' (MB = 2**20 bytes)."""
    count = count_parameters(model)
    return f"{type(model).__name__}: {count:,} parameters ({count * 4 / 2**20:.2f} MB as float32)"
