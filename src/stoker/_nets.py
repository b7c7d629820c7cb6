"""Small CNNs that need no download: the embedded default model of `stoker demo` and `stoker bench`,
and the CPU machine's benchmark models. Their weights are random (seeded), so their answers mean
nothing; they exist to measure the path around the model."""

from __future__ import annotations

import torch


class SmallCNN(torch.nn.Module):
    """A small classifier: a patchify stem (4x4, stride 4), two strided 3x3 convs, 1000 classes;
    about 34 MFLOPs per 224x224 image."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = torch.nn.Conv2d(3, 32, 4, stride=4)
        self.conv1 = torch.nn.Conv2d(32, 64, 3, stride=2, padding=1)
        self.conv2 = torch.nn.Conv2d(64, 128, 3, stride=2, padding=1)
        self.fc = torch.nn.Linear(128, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        out: torch.Tensor = self.fc(x.mean((2, 3)))
        return out


class TinyCNN(torch.nn.Module):
    """A lighter classifier, for measuring the data path rather than the model: a patchify stem
    (8x8, stride 8), one strided 3x3 conv, 1000 classes; about 7 MFLOPs per 224x224 image."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = torch.nn.Conv2d(3, 16, 8, stride=8)
        self.conv = torch.nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.fc = torch.nn.Linear(32, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(self.conv(x))
        out: torch.Tensor = self.fc(x.mean((2, 3)))
        return out


# Models stoker carries itself, by the names `stoker serve --model` and `stoker bench` take.
EMBEDDED: dict[str, type[torch.nn.Module]] = {"tiny": TinyCNN, "small": SmallCNN}


def build_model(name: str) -> torch.nn.Module:
    """``small``, ``tiny``, or a torchvision architecture with random weights."""
    if name in EMBEDDED:
        return EMBEDDED[name]()
    import torchvision

    model: torch.nn.Module = torchvision.models.get_model(name)
    return model
