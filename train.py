"""Train: `python train.py [hydra overrides]` (see README)."""

import gc

# The collector off while torch, Lightning and Hydra import (~400k objects that live as long as the process), then
# those objects frozen out of every later collection, the one at exit included: 1.3 s less per run (RESULTS.md, 14).
gc.disable()
from mnist_cnn.train import main  # noqa: E402

gc.freeze()
gc.enable()

if __name__ == "__main__":
    main()
