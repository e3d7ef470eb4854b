"""Train the MNIST CNN: `python train.py [hydra overrides]` (see README)."""

from mnist_cnn.train import main

if __name__ == "__main__":
    main()
