"""The small two-conv MNIST network of the official code (pytorch/examples mnist without dropout), 1x28x28."""
from torch import Tensor, nn
from torch.nn import functional as F


class MnistNet(nn.Module):
    def __init__(self, num_classes: int):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, kernel_size=3)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.fc1 = nn.Linear(64 * 12 * 12, 128)  # 28 -> 26 -> 24 -> max-pool -> 12
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, images: Tensor) -> Tensor:
        x = self.conv1(images).relu()
        x = F.max_pool2d(self.conv2(x), 2)  # no ReLU before the pool, as official
        x = self.fc1(x.flatten(1)).relu()
        return self.fc2(x)  # logits (official applied log_softmax here)
