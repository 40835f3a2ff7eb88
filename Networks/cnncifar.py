"""The two-conv CIFAR network of the official code, 3x32x32.

Official applied ReLU and softmax to the last layer before nn.CrossEntropyLoss (a softmax taken twice,
with the negative logits clipped to 0); this one returns the raw logits.
"""
from torch import Tensor, nn
from torch.nn import functional as F


class CNNCifar(nn.Module):
    def __init__(self, num_classes: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=5)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=5)
        self.fc1 = nn.Linear(64 * 5 * 5, 512)  # 32 -> 28 -> pool 14 -> 10 -> pool 5
        self.fc2 = nn.Linear(512, num_classes)

    def forward(self, images: Tensor) -> Tensor:
        x = F.max_pool2d(self.conv1(images).relu(), 2)
        x = F.max_pool2d(self.conv2(x).relu(), 2)
        x = self.fc1(x.flatten(1)).relu()
        return self.fc2(x)  # logits
