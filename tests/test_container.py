"""The container setup, read the way Docker reads it (no Docker engine runs here): the Dockerfile through
Docker's own parser, compose.yaml through a YAML loader, .dockerignore with Docker's matching rules, the
constraints file they share with README and CI, and the example notebook, executed."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import dockerfile
import nbformat
import pytest
import yaml
from conftest import real_data_dir
from nbclient import NotebookClient
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
IMAGE = "mnist-cnn"
NOTEBOOK = ROOT / "notebooks" / "mnist_quickstart.ipynb"
PORTS = {"tensorboard": 6006, "jupyter": 8888, "demo": 7860}
FREEZE_OMITS = {"pip", "setuptools", "wheel"}  # `pip freeze` never lists these, so constraints.txt cannot


def instructions(cmd: str | None = None) -> list[Any]:
    parsed = dockerfile.parse_file(str(ROOT / "Dockerfile"))
    return [c for c in parsed if cmd is None or c.cmd == cmd]


def pins() -> dict[str, str]:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    return {canonicalize_name(n): v for n, _, v in (s.partition("==") for s in lines if "==" in s)}


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def services() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]


def found(pattern: str, text: str) -> re.Match[str]:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in:\n{text}"
    return match


def dockerignored(path: str) -> bool:
    """Docker's rules (moby/patternmatcher): last matching pattern wins, a match on a parent folder counts."""
    ignored, parts = False, path.split("/")
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        if (pattern := line.strip()) and not pattern.startswith("#"):
            regex = re.escape(os.path.normpath(pattern.lstrip("!").lstrip("/"))).replace(r"\*\*/", "(.*/)?")
            regex = regex.replace(r"\*\*", ".*").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
            regex = regex.replace(r"\[", "[").replace(r"\]", "]")
            if any(re.fullmatch(regex, "/".join(parts[:i])) for i in range(1, len(parts) + 1)):
                ignored = not pattern.startswith("!")
    return ignored


def test_base_image_is_the_official_pytorch_cuda_runtime_with_the_constrained_torch() -> None:
    (base,) = instructions("FROM")  # one stage: the image is exactly this base plus the project
    name, _, tag = base.value[0].split("@")[0].partition(":")
    assert name == "pytorch/pytorch", "the official PyTorch image"
    match = re.fullmatch(r"(\d+\.\d+\.\d+)-cuda(\d+\.\d+)-cudnn\d+-runtime", tag)
    assert match, f"{tag!r} is not an exact <torch>-cuda<x.y>-cudnn<n>-runtime tag (never latest)"
    torch, cuda = match.groups()
    assert torch == pins()["torch"], "the base's torch is the one CI tests, so pip keeps it"
    (torch_req,) = [r for r in map(Requirement, pyproject()["project"]["dependencies"]) if r.name == "torch"]
    assert torch in torch_req.specifier
    assert pins()["nvidia-cuda-runtime"].startswith(cuda + "."), "constraints' CUDA wheels match the tag"


def test_runs_train_py_as_a_non_root_user_with_data_and_logs_on_volumes() -> None:
    args = {k: v for k, _, v in (a.value[0].partition("=") for a in instructions("ARG"))}
    users = [i for i, c in enumerate(instructions()) if c.cmd == "USER"]
    (entrypoint_at,) = [i for i, c in enumerate(instructions()) if c.cmd == "ENTRYPOINT"]
    assert users and users[-1] < entrypoint_at, "USER comes before the entrypoint"
    user = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], instructions()[users[-1]].value[0])
    uid, _, gid = user.partition(":")
    assert uid not in {"root", "0"} and gid not in {"root", "0"}, user
    (entrypoint,) = instructions("ENTRYPOINT")
    assert entrypoint.json, "exec form: overrides arrive as arguments and signals reach python"
    assert entrypoint.value == ("python", "/app/train.py")
    env = {k: v for c in instructions("ENV") for k, v in zip(c.value[::2], c.value[1::2], strict=True)}
    assert env["PYTHONUNBUFFERED"] == "1", "logs reach `docker logs` as they happen"
    targets = {v.split(":")[1] for v in services()["train"]["volumes"]}
    assert {env["MNIST_DATA_DIR"], env["MNIST_LOG_DIR"]} == targets == {"/data", "/app/logs"}, "the volumes"


def test_dependencies_are_a_layer_before_the_source_then_the_project_without_deps() -> None:
    steps = instructions()
    pip_runs = [i for i, c in enumerate(steps) if c.cmd == "RUN" and "pip install" in c.value[0]]
    assert len(pip_runs) == 2
    deps, project = pip_runs
    copied_before = {src for c in steps[:deps] if c.cmd == "COPY" for src in c.value[:-1]}
    assert copied_before == {"constraints.txt", "pyproject.toml"}, "only these may invalidate the deps layer"
    source_copy = next(i for i, c in enumerate(steps) if c.cmd == "COPY" and "mnist_cnn/" in c.value)
    assert deps < source_copy < project
    assert "--no-deps" in steps[project].value[0]


def test_the_image_installs_pyprojects_dependencies_all_pinned(tmp_path: Path) -> None:
    """Run the Dockerfile's own step that lists what the image installs, on this pyproject.toml."""
    (deps,) = [c.value[0] for c in instructions("RUN") if "-r /tmp/requirements.txt" in c.value[0]]
    (lister,) = [s for s in deps.split("&&") if "> /tmp/requirements.txt" in s]
    python, flag, script = shlex.split(lister.replace("> /tmp/requirements.txt", ""))
    assert (python, flag) == ("python", "-c")
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    project = pyproject()["project"]
    assert out.stdout.splitlines() == project["dependencies"] + project["optional-dependencies"]["notebook"]
    listed = [Requirement(line) for line in out.stdout.splitlines()]
    for req in listed:
        pin = pins().get(canonicalize_name(req.name))
        assert pin is not None and pin in req.specifier, f"{req.name} is not pinned in constraints.txt"


def test_dockerfile_readme_and_ci_install_from_the_same_constraints_file() -> None:
    installs = {
        "Dockerfile": [c.value[0] for c in instructions("RUN") if "pip install" in c.value[0]],
        "README.md": [s for s in (ROOT / "README.md").read_text().splitlines() if "pip install" in s],
        ".ci/run": [s for s in (ROOT / ".ci" / "run").read_text().splitlines() if "pip install" in s],
    }
    # The one exception: the MLflow UI's own environment. Its server needs SQLAlchemy 2, which constraints.txt pins
    # below 2 for the optuna extra; it gets the exact version of the client the runs log with instead.
    ui = [c for c in installs["README.md"] if ".mlflow-ui/bin/pip install" in c]
    assert len(ui) == 1 and f"mlflow=={pins()['mlflow-skinny']}" in ui[0], ui
    installs["README.md"] = [c for c in installs["README.md"] if c not in ui]
    for where, commands in installs.items():
        assert commands, f"{where} installs nothing?"
        for command in commands:
            assert "-c constraints.txt" in command, f"{where}: {command.strip()}"
            assert "-r constraints.txt" not in command, f"{where} must not install everything in it"


def test_constraints_pin_every_installed_dependency() -> None:
    """Walk the requirements `pip install -e ".[dev]"` installs (as CI does) through what is installed here:
    each one is installed, at its pin. The other extras' own requirements are pinned, checked statically."""
    project = pyproject()["project"]
    extras, me = project["optional-dependencies"], canonicalize_name(project["name"])
    for name, reqs in extras.items():
        for req in map(Requirement, reqs):
            pin = pins().get(canonicalize_name(req.name))
            assert canonicalize_name(req.name) == me or (pin and pin in req.specifier), f"[{name}] {req}: no pin fits"
    todo = [Requirement(r) for r in project["dependencies"]] + [Requirement(f"{me}[dev]")]
    pinned, seen = pins(), set()
    while todo:
        req = todo.pop()
        key = canonicalize_name(req.name)
        if (key, frozenset(req.extras)) in seen or key in FREEZE_OMITS:
            continue
        seen.add((key, frozenset(req.extras)))
        if key == me:  # ".[dev]" and the extras it names ("mnist-cnn[onnx]"): their requirements, not the project
            todo += [Requirement(r) for extra in req.extras for r in extras[extra]]
            continue
        try:
            version = metadata.version(key)
        except metadata.PackageNotFoundError:
            pytest.fail(f"{req} (needed by .[dev]) is not installed: pip install -c constraints.txt -e '.[dev]'")
        assert pinned.get(key) == version, f"{key} {version} is not pinned in constraints.txt"
        subs = [Requirement(line) for line in metadata.requires(key) or []]
        wanted = {"", *req.extras}
        todo += [r for r in subs if not r.marker or any(r.marker.evaluate({"extra": e}) for e in wanted)]
    assert {"torch", "lightning", "hydra-core", "nbclient"} <= {key for key, _ in seen}


def test_dockerignore_keeps_data_runs_and_secrets_out_but_everything_the_build_copies_in() -> None:
    for path in ["data/MNIST/raw/train-images-idx3-ubyte", "logs/train/runs/x/checkpoints/last.ckpt",
                 "outputs/x.log", "some/where/model.ckpt", "weights.pt", ".venv/bin/python", ".git/HEAD",
                 "mnist_cnn/__pycache__/net.cpython-311.pyc", "notebooks/logs/notebook/runs/x/metrics.json",
                 "notebooks/.ipynb_checkpoints/x.ipynb", "x/events.out.tfevents.1.host", ".env"]:  # fmt: skip
        assert dockerignored(path), path
    copied = [s for c in instructions("COPY") for s in c.value[:-1]]
    files = [p for s in copied for p in ([ROOT / s] if (ROOT / s).is_file() else (ROOT / s).rglob("*"))]
    sources = [p.relative_to(ROOT).as_posix() for p in files if p.is_file() and "__pycache__" not in p.parts]
    assert "conf/data/mnist.yaml" in sources and "notebooks/mnist_quickstart.ipynb" in sources
    assert [s for s in sources if dockerignored(s)] == []


def test_compose_services_volumes_and_gpus() -> None:
    svc = services()
    assert {"train", "tensorboard", "jupyter"} <= set(svc)
    assert {s["image"] for s in svc.values()} == {IMAGE}
    # `docker compose up train tensorboard` is the default workflow; jupyter waits for its profile
    assert "profiles" not in svc["train"] and "profiles" not in svc["tensorboard"]
    assert svc["jupyter"]["profiles"] == ["jupyter"]
    for name in ("train", "jupyter"):
        resources = svc[name]["deploy"]["resources"]
        (gpu,) = resources["reservations"]["devices"]
        assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
        assert {"cpus", "memory"} <= set(resources["limits"]), f"{name} has no CPU/memory limits"
        assert {"./data:/data", "./logs:/app/logs"} <= set(svc[name]["volumes"])
        assert svc[name]["shm_size"], "DataLoader workers and NCCL need more than 64 MB of /dev/shm"
    assert svc["tensorboard"]["volumes"] == ["./logs:/app/logs:ro"], "the same logs, read-only"
    assert svc["tensorboard"]["entrypoint"][:3] == ["tensorboard", "--logdir", "/app/logs"]
    for name, s in svc.items():
        uid, _, gid = re.sub(r"\$\{\w+:-(\w*)\}", r"\1", s["user"]).partition(":")  # no variables set
        assert uid not in {"", "0", "root"} and gid not in {"", "0", "root"}, name
        ports = [str(p) for p in s.get("ports", [])]
        assert ports == ([f"127.0.0.1:{PORTS[name]}:{PORTS[name]}"] if name in PORTS else []), name


def test_jupyter_starts_only_with_a_token(tmp_path: Path) -> None:
    """Run the service's entrypoint with a stand-in `jupyter` that reports how it was started."""
    jupyter = services()["jupyter"]
    assert jupyter["environment"]["JUPYTER_TOKEN"] == "${JUPYTER_TOKEN:-}", "passed from the host"
    argv = [a.replace("$$", "$") for a in jupyter["entrypoint"]]  # compose turns $$ into $
    assert not re.search(r"token=(''|\"\"|\s|$)|disable_check_xsrf|password=", " ".join(argv))
    fake = tmp_path / "jupyter"
    fake.write_text('#!/bin/sh\necho "started jupyter $*"\n')
    fake.chmod(0o755)

    def start(token: str) -> subprocess.CompletedProcess[str]:
        env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "JUPYTER_TOKEN": token}
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)

    refused = start("")
    assert refused.returncode != 0 and "started" not in refused.stdout
    assert "JUPYTER_TOKEN" in refused.stderr
    started = start("a-long-random-token")
    assert started.returncode == 0, started.stderr
    assert "started jupyter lab --ip=0.0.0.0 --port=8888" in started.stdout
    assert "a-long-random-token" not in started.stdout, "the token stays out of the command line"


def test_readme_documents_the_container_workflow() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Run in a container", 1)[1].split("\n## ", 1)[0]
    assert readme.index("## Run in a container") < readme.index("## Development")
    for needed in [f"docker build -t {IMAGE} .", "--gpus all", f"{IMAGE} trainer.devices=2", "--shm-size",
                   '--user "$(id -u):$(id -g)"', "-v ./data:/data -v ./logs:/app/logs",
                   "docker compose up train tensorboard", "docker compose --profile jupyter up jupyter",
                   "JUPYTER_TOKEN", "http://localhost:6006", "Non-root", "127.0.0.1"]:  # fmt: skip
        assert needed in section, needed


def test_notebook_trains_a_few_batches_and_predicts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir = real_data_dir()  # conftest.py stops the run when it lacks MNIST
    monkeypatch.setenv("MNIST_DATA_DIR", str(data_dir))
    monkeypatch.setenv("MNIST_LOG_DIR", str(tmp_path / "logs"))
    data_before = {p: p.stat().st_mtime_ns for p in data_dir.rglob("*")}

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert not [o for c in nb.cells if c.cell_type == "code" for o in c.outputs], "stored without outputs"
    run_in = {"metadata": {"path": str(tmp_path)}}  # the kernel's working directory
    NotebookClient(nb, timeout=600, kernel_name="python3", resources=run_in).execute()

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    text = "".join(o.text for o in outputs if o.output_type == "stream" and o.name == "stdout")
    acc, n_test = found(r"test/acc (\d\.\d+) on (\d+) test images", text).groups()
    assert float(acc) > 0.3 and int(n_test) > 0, "a few batches already beat chance (0.1)"
    assert float(found(r"first 1000 test images: (\d\.\d+)", text).group(1)) > 0.3
    found(r"predicted:( \d){16}\ntrue: +( \d){16}", text)
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 1, "the grid of test digits"
    (metrics,) = (tmp_path / "logs" / "notebook" / "runs").glob("*/metrics.json")
    assert (metrics.parent / "config.yaml").is_file()
    assert {p: p.stat().st_mtime_ns for p in data_dir.rglob("*")} == data_before, "the data dir is read-only"
