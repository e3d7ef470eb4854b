"""MNIST from IDX file to batch: input contract, IDX reader, DataModule, augmentation."""
