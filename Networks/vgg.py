"""VGG11star: a slim VGG11 (channel widths halved, 256-wide classifier, no BatchNorm), 3x32x32.

Official hard-coded 10 outputs whatever the class count; this one honours it.
"""
import math

from torch import Tensor, nn

# Conv widths and max-pools ("M"); five pools take 32x32 down to 1x1, leaving 256 features.
VGG11STAR_LAYERS = (32, "M", 64, "M", 128, 128, "M", 256, 256, "M", 256, 256, "M")


class VGG11Star(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in VGG11STAR_LAYERS:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(channels, item, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                channels = item
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(channels, 256),
            nn.ReLU(inplace=True),
            nn.Linear(256, 256),
            nn.ReLU(inplace=True),
            nn.Linear(256, num_classes),
        )
        # He-style init of the convolutions, as official (fan-out over the kernel area).
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
                nn.init.zeros_(module.bias)

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier(self.features(images).flatten(1))  # logits
