"""byoquick: A Flower / PyTorch app.

Like quickstart-pytorch, except the data: nothing can be downloaded here, so each
partition is generated deterministically from ``partition-id`` / ``num-partitions``.
"""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

NUM_FEATURES = 8
_TRUE_WEIGHTS = torch.linspace(-1.0, 1.0, NUM_FEATURES)


class Net(nn.Module):
    """A tiny classifier."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(NUM_FEATURES, 16)
        self.fc2 = nn.Linear(16, 2)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def load_data(partition_id: int, num_partitions: int, batch_size: int):
    """Load partition data: a shifted slice of one shared synthetic problem."""
    generator = torch.Generator().manual_seed(1000 + partition_id)
    shift = (partition_id - (num_partitions - 1) / 2) * 0.5
    features = torch.randn(240, NUM_FEATURES, generator=generator) + shift
    labels = ((features - shift) @ _TRUE_WEIGHTS > 0).long()
    trainloader = DataLoader(
        TensorDataset(features[:200], labels[:200]), batch_size=batch_size, shuffle=True
    )
    testloader = DataLoader(TensorDataset(features[200:], labels[200:]), batch_size=batch_size)
    return trainloader, testloader


def train(net, trainloader, epochs, lr, device):
    """Train the model on the training set."""
    net.to(device)
    criterion = torch.nn.CrossEntropyLoss().to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    net.train()
    running_loss = 0.0
    for _ in range(epochs):
        for features, labels in trainloader:
            features, labels = features.to(device), labels.to(device)
            optimizer.zero_grad()
            loss = criterion(net(features), labels)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
    return running_loss / (epochs * len(trainloader))


def test(net, testloader, device):
    """Validate the model on the test set."""
    net.to(device)
    criterion = torch.nn.CrossEntropyLoss()
    correct, loss = 0, 0.0
    with torch.no_grad():
        for features, labels in testloader:
            features, labels = features.to(device), labels.to(device)
            outputs = net(features)
            loss += criterion(outputs, labels).item()
            correct += (torch.max(outputs.data, 1)[1] == labels).sum().item()
    accuracy = correct / len(testloader.dataset)
    loss = loss / len(testloader)
    return loss, accuracy
