"""Baseline (b): the seed net trained by a plain loop slicing batches from one preloaded tensor.

No framework, no per-sample work: what the hardware gives this net at this batch size. Prints the seed
script's key=value line so the benchmark parses both the same way.

    python benchmarks/raw_loop.py DATA_DIR [--epochs 1] [--batch-size 64] [--bf16] [--channels-last]
                                  [--keep-freed-memory]   # train.py's malloc setting (KeepFreedMemory)
"""

import time

T0 = time.perf_counter()

import argparse  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torchvision import datasets  # noqa: E402

from mnist_cnn.callbacks.throughput import KeepFreedMemory  # noqa: E402
from mnist_cnn.models.module import normalize  # noqa: E402
from mnist_cnn.models.nets import SimpleCNN  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data_dir")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--keep-freed-memory", action="store_true")
    args = ap.parse_args()
    if args.keep_freed_memory:
        KeepFreedMemory().setup(None, None, "fit")  # type: ignore[arg-type]  # it reads neither
    torch.manual_seed(0)
    layout = torch.channels_last if args.channels_last else torch.contiguous_format
    train, test = datasets.MNIST(args.data_dir, train=True), datasets.MNIST(args.data_dir, train=False)
    images, labels = train.data.unsqueeze(1), train.targets
    net = SimpleCNN().to(memory_format=layout)
    opt = torch.optim.Adam(net.parameters())
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16)
    t1 = time.perf_counter()
    for _ in range(args.epochs):
        for idx in torch.randperm(len(labels)).split(args.batch_size):
            x = normalize(images[idx]).contiguous(memory_format=layout)
            with autocast:
                loss = F.cross_entropy(net(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    t2 = time.perf_counter()
    net.eval()
    with torch.no_grad(), autocast:
        logits = torch.cat(
            [net(normalize(x).contiguous(memory_format=layout)) for x in test.data.unsqueeze(1).split(1000)]
        )
    acc = (logits.argmax(1) == test.targets).float().mean().item()
    t3 = time.perf_counter()
    print(
        f"startup_s={t1 - T0:.2f} train_s={t2 - t1:.2f} eval_s={t3 - t2:.2f} total_s={t3 - T0:.2f} "
        f"epochs={args.epochs} imgs_per_s={args.epochs * len(labels) / (t2 - t1):.0f} test_acc={100 * acc:.2f}"
    )


if __name__ == "__main__":
    main()
