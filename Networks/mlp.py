"""Two-hidden-layer perceptron (official: 784-200-200-10), sized from the input and the class count."""
from torch import Tensor, nn


class MLP(nn.Module):
    def __init__(self, in_features: int, num_classes: int, hidden: int = 200):
        super().__init__()
        self.input_layer = nn.Linear(in_features, hidden)
        self.hidden_layer = nn.Linear(hidden, hidden)
        self.output_layer = nn.Linear(hidden, num_classes)

    def forward(self, images: Tensor) -> Tensor:
        x = images.flatten(1)
        x = self.input_layer(x).relu()
        x = self.hidden_layer(x).relu()
        return self.output_layer(x)  # logits
