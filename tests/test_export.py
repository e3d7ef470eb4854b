"""`mnist-export` to ONNX and `mnist-predict model.onnx`: the same predictions as the checkpoint, no torch.

The export is the console script itself (one subprocess, shared by the module); the rest runs in this process."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import metrics, real_data_dir
from synthetic_digits import user_digits
from torchvision import datasets

from mnist_cnn.infer import export, predict
from mnist_cnn.infer.classifiers import OnnxClassifier, load_classifier, open_classifier, softmax
from mnist_cnn.infer.preprocess import preprocess

BIN = Path(sys.executable).parent
N_TEST = 2000  # of MNIST's test images: one batch through both models (all 10,000 take 1.4 GB of activations)


def cli(name: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / name), *map(str, args)], capture_output=True, text=True, timeout=600)


def run_main(
    main: Callable[[list[str]], None], capsys: pytest.CaptureFixture[str], *args: str | Path
) -> tuple[int, str, str]:
    """A console script's `main(ARGS)` in this process: exit code, stdout, stderr (any other exception fails)."""
    capsys.readouterr()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as stop:
        code = int(stop.code or 0)
    return code, *capsys.readouterr()


@pytest.fixture(scope="module")
def exported(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(checkpoint, its ONNX export), made by the command users run."""
    ckpt = Path(metrics(trained_run)["best_ckpt"])
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    proc = cli("mnist-export", ckpt, "--format", "onnx", "--output", out)
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out}" in proc.stdout
    return ckpt, out


@pytest.fixture(scope="module")
def mnist_test() -> datasets.MNIST:
    return datasets.MNIST(real_data_dir(), train=False)


def test_the_onnx_file_is_valid_with_a_dynamic_batch_axis(exported: tuple[Path, Path]) -> None:
    model = onnx.load(str(exported[1]))
    onnx.checker.check_model(model, full_check=True)
    (image,) = model.graph.input
    dims = image.type.tensor_type.shape.dim
    assert image.name == "image" and image.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [1, 28, 28]
    assert [o.name for o in model.graph.output] == ["logits"]


def test_onnx_and_torch_agree_on_real_test_images(exported: tuple[Path, Path], mnist_test: datasets.MNIST) -> None:
    ckpt, onnx_path = exported
    images, labels = mnist_test.data.numpy()[:N_TEST], mnist_test.targets.numpy()[:N_TEST]
    with torch.inference_mode():
        expected = load_classifier(ckpt)(torch.from_numpy(images).unsqueeze(1)).numpy()
    session = OnnxClassifier(onnx_path)
    got = session.logits(images)  # all in one batch
    diff = float(np.abs(got - expected).max())
    print(f"ONNX vs torch on {N_TEST} test images: max |logit diff| {diff:.2e}")
    assert got.shape == (N_TEST, 10) and diff < 1e-4
    assert (got.argmax(1) == expected.argmax(1)).all()
    assert np.abs(session.logits(images[:1]) - expected[:1]).max() < 1e-4  # and a batch of one
    assert (got.argmax(1) == labels).mean() > 0.95


def test_predicting_with_onnx_never_imports_torch(exported: tuple[Path, Path], tmp_path: Path) -> None:
    from PIL import Image, ImageDraw

    img = Image.new("L", (300, 300), 235)
    ImageDraw.Draw(img).line([(150, 40), (150, 260)], fill=20, width=22)
    img.save(tmp_path / "one.png")
    code = (
        "import sys\nfrom mnist_cnn.infer.predict import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
        "    assert not e.code, e.code\nassert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert 'lightning' not in sys.modules\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(exported[1]), str(tmp_path / "one.png")], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    path, digit, confidence = proc.stdout.strip().split("\t")
    assert path == str(tmp_path / "one.png") and digit == "1" and 0.5 < float(confidence) <= 1


def test_onnx_reads_user_digits_as_torch_does(
    exported: tuple[Path, Path], mnist_test: datasets.MNIST, tmp_path: Path
) -> None:
    """The same preprocessed photos (mnist-predict's) through both models: the same digits, the same confidences."""
    truth = user_digits(tmp_path, 100, seed=12, mnist=(mnist_test.data.numpy(), mnist_test.targets.numpy()))
    images = np.stack([preprocess(tmp_path / name) for name in truth])
    by_torch, by_onnx = (softmax(open_classifier(model).logits(images)) for model in exported)
    assert (by_onnx.argmax(1) == by_torch.argmax(1)).all()
    assert np.abs(by_onnx - by_torch).max() < 1e-4
    accuracy = np.mean(by_onnx.argmax(1) == np.array(list(truth.values())))
    print(f"user-style digits, ONNX: {accuracy:.3f}")
    assert accuracy >= 0.9


def test_bad_model_files_are_one_line(
    exported: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "broken.onnx").write_bytes(exported[1].read_bytes()[:300])
    (tmp_path / "digit.png").write_bytes(b"")
    for model, message in [(tmp_path / "broken.onnx", "not a readable ONNX model"), (tmp_path / "no.onnx", "no such")]:
        code, out, err = run_main(predict.main, capsys, model, tmp_path / "digit.png")
        assert code == 2 and out == ""
        assert err.startswith("mnist-predict: error: ") and err.count("\n") == 1 and message in err, err
    code, out, err = run_main(export.main, capsys, tmp_path / "missing.ckpt", "--output", tmp_path / "m.onnx")
    assert code == 2 and err == f"mnist-export: error: {tmp_path / 'missing.ckpt'}: no such file\n"
    assert not (tmp_path / "m.onnx").exists()
