"""A trained net on a user's images: preprocessing, torch/ONNX classifiers, predict, export, demo."""


def first_line(err: BaseException, limit: int = 160, typed: bool = True) -> str:
    """`Type: first line` of an exception (`typed=False`: the line alone); library errors can span pages."""
    line = next(iter(str(err).strip().splitlines()), "")
    text = f"{type(err).__name__}: {line}" if line and typed else line or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
