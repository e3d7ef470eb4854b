"""pyproject.toml says what the code needs (the Python the pins need, every import declared, nothing unused), and
what it builds works: the console scripts, and a wheel installed without the source tree."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

from conftest import REPO, check, metrics
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

# Dependencies the code never imports but needs at run time, each with the reason (keep this list short).
RUNTIME_ONLY = {
    "tensorboard": "Lightning's TensorBoardLogger (the default logger=tensorboard) writes through it",
}
# Floors set by features the code uses: (lowest version that works, why).
NEEDS = {
    "torch": ("2.6", "export's dynamo=True (2.5); torch.load's weights_only default (2.6)"),
    "torchvision": ("0.21", "the release built for torch 2.6"),
    "lightning": ("2.6.6", "WeightAveraging (2.6.0, callbacks/ema.py); 2.6.6's checkpoint-loading fix"),
    "typing-extensions": ("4.4", "typing_extensions.override"),
}


@cache
def project() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def names(requirements: list[str]) -> set[str]:
    return {str(canonicalize_name(Requirement(r).name)) for r in requirements} - {canonicalize_name(project()["name"])}


def imports(path: Path) -> list[tuple[str, bool]]:
    """(dotted module, imported at module level?) for every absolute import, those inside functions too."""
    tree = ast.parse(path.read_text())
    inside = {id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
              for n in ast.walk(f)}  # fmt: skip
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, id(node) not in inside) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from mnist_cnn.x import y`: y may be a module too
            found += [
                (m, id(node) not in inside) for m in (node.module, *(f"{node.module}.{a.name}" for a in node.names))
            ]
    return found


def scan() -> tuple[dict[str, set[str]], set[str]]:
    """Third-party top-level module -> the mnist_cnn modules importing it at module level (maybe none); and
    the mnist_cnn modules the project itself imports (from other modules, or as console-script entry points)."""
    third: dict[str, set[str]] = {}
    internal = {entry.split(":")[0] for entry in project()["scripts"].values()}
    for path in sorted((REPO / "mnist_cnn").rglob("*.py")):
        me = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        for dotted, at_module_level in imports(path):
            top = dotted.split(".")[0]
            if top == "mnist_cnn":
                internal.add(dotted)
            elif top not in sys.stdlib_module_names and top != "__main__":
                third.setdefault(top, set()).update([me] if at_module_level else [])
    return third, internal


@cache
def installed() -> dict[str, list[str]]:
    """Top-level module -> the installed distributions providing it (a scan of every installed package)."""
    return dict(metadata.packages_distributions())


def distributions(module: str) -> set[str]:
    dists = installed().get(module)
    assert dists, f"mnist_cnn/ imports {module}, which no installed distribution provides"
    return {canonicalize_name(d) for d in dists}


def test_every_import_is_declared_and_extras_stay_out_of_the_core() -> None:
    """An extra's import at module level is fine only in a module nothing imports (one a config names)."""
    deps = names(project()["dependencies"])
    extras = {d for reqs in project()["optional-dependencies"].values() for d in names(reqs)}
    third, internal = scan()
    assert {"torch", "lightning", "numpy", "PIL", "onnxruntime"} <= set(third)  # the scan sees imports in functions
    for module, importers in third.items():
        dists = distributions(module)
        if dists & deps:
            continue
        assert dists & extras, f"mnist_cnn/ imports {module} ({', '.join(dists)}): declare it in pyproject.toml"
        core = sorted(importers & internal)
        assert not core, f"{core} import {module} (an extra's) at module level: import it where it is needed"


def test_every_dependency_is_imported_or_known_to_be_needed_at_run_time() -> None:
    imported = {d for module in scan()[0] for d in distributions(module)}
    for dep in names(project()["dependencies"]):
        assert dep in imported or dep in RUNTIME_ONLY, f"{dep} is declared but mnist_cnn/ never imports it"
    assert set(RUNTIME_ONLY) <= names(project()["dependencies"])


def test_floors_admit_no_version_the_code_cannot_run_on() -> None:
    reqs = {str(canonicalize_name(Requirement(r).name)): Requirement(r) for r in project()["dependencies"]}
    for name, (needed, why) in NEEDS.items():
        floors = [Version(s.version) for s in reqs[name].specifier if s.operator in (">=", "==", "~=")]
        assert floors and max(floors) >= Version(needed), f"{name}{reqs[name].specifier}: needs >= {needed} ({why})"


def test_requires_python_is_what_the_pinned_versions_need() -> None:
    """Each pin in constraints.txt that is installed here must support the oldest Python pyproject allows."""
    requires = SpecifierSet(project()["requires-python"])
    (oldest,) = [Version(s.version) for s in requires if s.operator == ">="]
    assert oldest.release[:2] <= sys.version_info[:2], "this very interpreter is allowed"
    lines = (REPO / "constraints.txt").read_text().splitlines()
    pins = {canonicalize_name(n): v for n, _, v in (s.partition("==") for s in lines if "==" in s)}
    checked = 0
    for name, version in pins.items():
        try:
            meta = metadata.metadata(name)
        except metadata.PackageNotFoundError:
            continue  # an extra not installed here
        requires_python = (meta.get_all("Requires-Python") or [""])[0]  # absent: KeyError on item access
        if meta["Version"] != version or not requires_python:
            continue
        checked += 1
        needs = SpecifierSet(requires_python)
        assert needs.contains(oldest, prereleases=True), (
            f"{name}=={version} needs Python {needs}, pyproject allows {oldest}"
        )
    assert checked > 50
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]
    assert tool["ruff"]["target-version"] == f"py{oldest.major}{oldest.minor}"
    assert tool["mypy"]["python_version"] == f"{oldest.major}.{oldest.minor}"


def script(bin_dir: Path, name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """A console script as users call it, from a folder outside the repository."""
    return subprocess.run([str(bin_dir / name), *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_a_wheel_install_finds_its_configs_and_page(tiny_mnist: Path, tmp_path: Path) -> None:
    """A non-editable install: conf/ and the demo page travel inside the wheel; training runs from anywhere."""
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    check(subprocess.run([*pip, "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(REPO)],
                         capture_output=True, text=True, timeout=600))  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("mnist_cnn-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    configs = {f"mnist_cnn/conf/{p.relative_to(REPO / 'conf').as_posix()}" for p in (REPO / "conf").rglob("*.yaml")}
    assert configs <= shipped and "mnist_cnn/infer/demo.html" in shipped, sorted(configs - shipped)

    venv = tmp_path / "venv"
    check(subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], capture_output=True, text=True))
    site = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    # The dependencies from this environment, as a plain path: its .pth files (the editable install) stay off.
    (site / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    check(subprocess.run([*pip, "--python", str(venv / "bin" / "python"), "install", "--no-deps", "-q", str(wheel)],
                         capture_output=True, text=True, timeout=600))  # fmt: skip
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = "import json, mnist_cnn, mnist_cnn.infer.demo as d; print(json.dumps([mnist_cnn.CONFIG_DIR, d.__file__]))"
    where = check(subprocess.run([str(venv / "bin" / "python"), "-c", probe], cwd=elsewhere, capture_output=True,
                                 text=True, timeout=120))  # fmt: skip
    config_dir, demo = map(Path, json.loads(where.stdout))
    assert config_dir == site / "mnist_cnn" / "conf" and (demo.parent / "demo.html").is_file()
    assert [name for name in project()["scripts"] if not (venv / "bin" / name).is_file()] == [], "console scripts"
    check(script(venv / "bin", "mnist-train", "debug=fdr", "data.val_size=50", "logger=none",
                 f"data.data_dir={tiny_mnist}", f"hydra.run.dir={tmp_path / 'run'}", cwd=elsewhere))  # fmt: skip
    assert metrics(tmp_path / "run")["test/n_images"] == 120
