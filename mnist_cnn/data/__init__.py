"""Data modules: images in memory as uint8 (memory.py), from IDX files (mnist.py) or an image folder; augmentation."""
