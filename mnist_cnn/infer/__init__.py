"""A trained net on a user's images: preprocessing, torch/ONNX classifiers, predict, export, demo."""
