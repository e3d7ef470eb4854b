"""Baseline (a): the seed article's training, as the article describes it, in the project's own code.

A clone has no copy of the article's script, yet the benchmark measures against it: this is that script's
recipe step for step. Per-sample PIL transforms (ToTensor + Normalize((0.1307,), (0.3081,))) through
torchvision's MNIST and a DataLoader, batch 64, shuffled, Adam (lr 1e-3), fp32, cross-entropy, N epochs,
then the test accuracy. The net is `SimpleCNN` (the seed's layers and parameter names), called bare on the
normalised floats as the article does, not the package's uint8 model. Same seed and the same order of random
draws as the article's script. Never downloads, never writes into DATA_DIR. Prints the article script's
key=value line, so the benchmark parses both the same way.

    python benchmarks/seed_baseline.py DATA_DIR [EPOCHS]   # DATA_DIR holds MNIST/raw/*-ubyte
    python benchmarks/seed_baseline.py DATA_DIR 1 --max-steps 20   # smoke test: 20 batches an epoch
"""

import time

T0 = time.perf_counter()  # before `import torch`, as in the article's script: start-up counts

import argparse  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from torchvision import datasets, transforms  # noqa: E402

from mnist_cnn.models.nets import SimpleCNN  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("epochs", type=int, nargs="?", default=1)
    ap.add_argument("--max-steps", type=int, help="stop each epoch after this many batches (smoke tests only)")
    args = ap.parse_args()
    torch.manual_seed(0)  # the article's seed, drawn from in the same order: same init, same shuffles

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # as the article
    net = SimpleCNN().to(device)
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    try:
        train_set = datasets.MNIST(args.data_dir, train=True, download=False, transform=transform)
        test_set = datasets.MNIST(args.data_dir, train=False, download=False, transform=transform)
    except RuntimeError:  # torchvision's own message suggests download=True, which this baseline never does
        sys.exit(f"MNIST not found: no {args.data_dir}/MNIST/raw/*-ubyte (this baseline never downloads)")
    train_loader = DataLoader(train_set, batch_size=64, shuffle=True)
    test_loader = DataLoader(test_set, batch_size=1000)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    criterion = nn.CrossEntropyLoss()

    t1 = time.perf_counter()
    seen = 0
    for _ in range(args.epochs):
        net.train()
        for step, (data, target) in enumerate(train_loader):
            if args.max_steps is not None and step >= args.max_steps:
                break
            data, target = data.to(device), target.to(device)
            optimizer.zero_grad()
            loss = criterion(net(data), target)
            loss.backward()
            optimizer.step()
            seen += len(target)
    t2 = time.perf_counter()
    net.eval()
    correct = 0
    with torch.no_grad():
        for data, target in test_loader:
            correct += int((net(data.to(device)).argmax(1) == target.to(device)).sum().item())
    t3 = time.perf_counter()
    print(
        f"startup_s={t1 - T0:.2f} train_s={t2 - t1:.2f} eval_s={t3 - t2:.2f} total_s={t3 - T0:.2f} "
        f"epochs={args.epochs} imgs_per_s={seen / (t2 - t1):.0f} test_acc={100 * correct / len(test_set):.2f}"
    )


if __name__ == "__main__":
    main()
