"""Networks/: every model on every dataset shape it fits, pinned sizes, registry errors, determinism."""
import pytest
import torch
from torch import nn

from Networks import (
    MODEL_NAMES,
    build_model,
    check_model_fits,
    count_parameters,
    describe_model,
    is_language_model,
)

# (channels, side, classes) of each image dataset; mnist and fmnist share a shape but are listed apart.
IMAGE_DATASETS = {
    "mnist": (1, 28, 10),
    "fmnist": (1, 28, 10),
    "emnist": (1, 28, 47),
    "cifar10": (3, 32, 10),
    "cifar100": (3, 32, 100),
}
FITS = {
    "mlp": ["mnist", "fmnist", "emnist", "cifar10", "cifar100"],
    "mnistnet": ["mnist", "fmnist", "emnist"],
    "cnncifar": ["cifar10", "cifar100"],
    "vgg": ["cifar10", "cifar100"],
    "resnet": ["mnist", "fmnist", "emnist", "cifar10", "cifar100"],
}
IMAGE_CASES = [(model, dataset) for model, datasets in FITS.items() for dataset in datasets]
VOCAB_SIZES = (33278, 10000)  # WikiText-2, Penn Treebank
SEQ_LEN, TEXT_BATCH = 35, 4

# Trainable parameters. With 10 classes (the only count the official MLP and VGG produce) every image
# model matches the official architecture's count: MLP 784-200-200-10, MnistNet, CNNCifar, VGG11star,
# ResNet18 without BatchNorm (11,173,962 of the BatchNorm ResNet18 minus 4,800: each BatchNorm's scale
# and shift replaced by one conv bias); the transformer with 33,278 tokens matches the official
# Utils/Helper.py count of pytorch/examples' TransformerModel.
PINNED_COUNTS = {
    ("mlp", "mnist"): 784 * 200 + 200 + 200 * 200 + 200 + 200 * 10 + 10,  # 199,210
    ("mlp", "emnist"): 206_647,
    ("mlp", "cifar10"): 656_810,
    ("mlp", "cifar100"): 674_900,
    ("mnistnet", "mnist"): 1_199_882,
    ("mnistnet", "emnist"): 1_204_655,
    ("cnncifar", "cifar10"): 878_538,
    ("cnncifar", "cifar100"): 924_708,
    ("vgg", "cifar10"): 2_440_394,
    ("vgg", "cifar100"): 2_463_524,
    ("resnet", "cifar10"): 11_169_162,
    ("resnet", "cifar100"): 11_215_332,
    ("resnet", "mnist"): 11_168_010,
    ("resnet", "emnist"): 11_186_991,
    ("transformer", 33278): 13_828_478,
    ("transformer", 10000): 4_494_000,
}


def build_for(model: str, dataset: str | int, seed: int = 0) -> nn.Module:
    """Build `model` for an image dataset name, or for a vocabulary size (transformer)."""
    torch.manual_seed(seed)
    if isinstance(dataset, int):
        return build_model(model, dataset)
    channels, side, classes = IMAGE_DATASETS[dataset]
    return build_model(model, classes, in_channels=channels, image_size=side)


def assert_gradients_finite_and_nonzero(model: nn.Module) -> None:
    for name, param in model.named_parameters():
        assert param.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(param.grad).all(), f"{name} has a non-finite gradient"
        assert param.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


@pytest.mark.parametrize("model_name,dataset", IMAGE_CASES)
def test_image_model_forward_backward(model_name, dataset):
    channels, side, classes = IMAGE_DATASETS[dataset]
    model = build_for(model_name, dataset)
    batch = 2 if model_name in ("vgg", "resnet") else 4
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(batch, channels, side, side, generator=generator)
    labels = torch.randint(0, classes, (batch,), generator=generator)

    logits = model(images)
    assert logits.shape == (batch, classes)
    # Raw logits: neither probabilities (rows summing to 1) nor ReLU-clipped at 0.
    assert (logits < 0).any()
    assert not torch.allclose(logits.sum(dim=1), torch.ones(batch))
    nn.CrossEntropyLoss()(logits, labels).backward()
    assert_gradients_finite_and_nonzero(model)


@pytest.mark.parametrize("vocab_size", VOCAB_SIZES)
def test_transformer_forward_backward(vocab_size):
    model = build_for("transformer", vocab_size)
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, vocab_size, (SEQ_LEN + 1, TEXT_BATCH), generator=generator)
    inputs, targets = tokens[:-1], tokens[1:]

    logits = model(inputs)
    assert logits.shape == (SEQ_LEN, TEXT_BATCH, vocab_size)
    assert (logits < 0).any()  # logits, not log-probabilities (which are all negative) nor probabilities
    assert (logits > 0).any()
    nn.CrossEntropyLoss()(logits.view(-1, vocab_size), targets.reshape(-1)).backward()
    assert_gradients_finite_and_nonzero(model)


def test_transformer_is_causal_and_takes_any_length():
    model = build_for("transformer", 100).eval()
    tokens = torch.randint(0, 100, (SEQ_LEN, 2), generator=torch.Generator().manual_seed(3))
    changed_tail = tokens.clone()
    changed_tail[20:] = (changed_tail[20:] + 1) % 100
    with torch.no_grad():
        full, altered = model(tokens), model(changed_tail)
        short = model(tokens[:20])  # a shorter final batch rebuilds the mask
        full_again = model(tokens)
    torch.testing.assert_close(full[:20], altered[:20])  # the future cannot leak into the past
    assert not torch.allclose(full[20:], altered[20:])
    torch.testing.assert_close(short, full[:20])
    torch.testing.assert_close(full_again, full)


def test_transformer_state_dict_holds_parameters_only():
    model = build_for("transformer", 1000)
    model(torch.zeros(SEQ_LEN, 1, dtype=torch.long))  # builds and caches the causal mask
    keys = set(model.state_dict())
    assert keys == {name for name, _ in model.named_parameters()}
    assert "positions" in dict(model.named_buffers())  # the table exists, it is just not saved or sent
    assert not any("position" in key or "mask" in key for key in keys)


@pytest.mark.parametrize("model_name,dataset", [*IMAGE_CASES, ("transformer", 1000)])
def test_no_batchnorm_and_state_is_parameters(model_name, dataset):
    model = build_for(model_name, dataset)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert set(model.state_dict()) == {name for name, _ in model.named_parameters()}


@pytest.mark.parametrize("key,expected", PINNED_COUNTS.items(), ids=[f"{m}-{d}" for m, d in PINNED_COUNTS])
def test_parameter_counts_are_pinned(key, expected):
    assert count_parameters(build_for(*key)) == expected


def test_count_parameters_skips_frozen_and_describe_model():
    model = build_for("mlp", "mnist")
    assert describe_model(model) == "MLP: 199,210 parameters (0.76 MB as float32)"
    model.output_layer.requires_grad_(False)
    assert count_parameters(model) == 199_210 - (200 * 10 + 10)


@pytest.mark.parametrize("model_name,dataset", [("mlp", "mnist"), ("cnncifar", "cifar10"),
                                                ("resnet", "cifar10"), ("transformer", 1000)])
def test_same_seed_same_model(model_name, dataset):
    first, second = build_for(model_name, dataset), build_for(model_name, dataset)
    other_seed = build_for(model_name, dataset, seed=1)
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    pairs = zip(first.parameters(), other_seed.parameters(), strict=True)
    assert any(not torch.equal(a, c) for a, c in pairs)


def test_mlp_honours_input_size_and_class_count():
    torch.manual_seed(0)
    model = build_model("mlp", 7, in_channels=2, image_size=5)
    assert model(torch.randn(3, 2, 5, 5)).shape == (3, 7)
    assert count_parameters(model) == 50 * 200 + 200 + 200 * 200 + 200 + 200 * 7 + 7


def test_unknown_model_names_the_choices():
    with pytest.raises(ValueError, match="unknown model 'lenet'; choose one of: " + ", ".join(MODEL_NAMES)):
        build_model("lenet", 10)
    for call in (lambda: is_language_model("lenet"), lambda: check_model_fits("lenet", text=False)):
        with pytest.raises(ValueError, match="unknown model 'lenet'"):
            call()


def test_is_language_model():
    assert [is_language_model(name) for name in MODEL_NAMES] == [False] * 5 + [True]


@pytest.mark.parametrize("model_name,channels,side,message", [
    ("mnistnet", 3, 32, r"'mnistnet' takes 1x28x28 \(mnist, fmnist, emnist\) images, not 3x32x32"),
    ("cnncifar", 1, 28, r"'cnncifar' takes 3x32x32 \(cifar10, cifar100\) images, not 1x28x28"),
    ("vgg", 1, 28, r"'vgg' takes 3x32x32 \(cifar10, cifar100\) images, not 1x28x28"),
    ("resnet", 3, 64, r"'resnet' takes 1x28x28 \(mnist, fmnist, emnist\) or 3x32x32 .* images, not 3x64x64"),
    ("mlp", 0, 28, "image shape must be positive"),
])
def test_wrong_image_shape_is_refused(model_name, channels, side, message):
    with pytest.raises(ValueError, match=message):
        check_model_fits(model_name, text=False, in_channels=channels, image_size=side)
    with pytest.raises(ValueError, match=message):
        build_model(model_name, 10, in_channels=channels, image_size=side)


def test_wrong_kind_of_dataset_is_refused():
    with pytest.raises(ValueError, match="'transformer' is a language model .* choose one of: mlp, mnistnet"):
        check_model_fits("transformer", text=False)
    with pytest.raises(ValueError, match="'vgg' is an image model .* choose one of: transformer"):
        check_model_fits("vgg", text=True, in_channels=3, image_size=32)


def test_accepted_pairings_pass():
    for model_name, datasets in FITS.items():
        for dataset in datasets:
            channels, side, _ = IMAGE_DATASETS[dataset]
            assert check_model_fits(model_name, text=False, in_channels=channels, image_size=side) is None
    assert check_model_fits("transformer", text=True) is None


def test_too_few_classes_is_refused():
    with pytest.raises(ValueError, match="'mlp' needs a class count of at least 2, got 1"):
        build_model("mlp", 1)
    with pytest.raises(ValueError, match="'transformer' needs a vocabulary size of at least 2, got 0"):
        build_model("transformer", 0)
