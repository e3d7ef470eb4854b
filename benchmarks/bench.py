"""Speed benchmark: the seed article's training vs a raw tensor loop vs `train.py`, same machine, interleaved rounds.

    python benchmarks/bench.py                      # 5 rounds (~21 min), real MNIST from $MNIST_DATA_DIR
    python benchmarks/bench.py --rounds 3 --json bench.json   # quicker, raw results kept
    python benchmarks/bench.py --seed-script PATH/seed_script.py   # baseline: the article's own script

Baseline (cases a, a3): benchmarks/seed_baseline.py, the article's training re-implemented step for step; the
article's own script instead with --seed-script, or when ../shared/seed_article/seed_script.py exists.
The header names the baseline that ran, the CPU, its bf16/AVX flags and torch's view of them; the table
gives each case's precision.

Cases (each a fresh process, so start-up counts in wall time):
  a      the seed article's training as written (per-sample PIL + DataLoader, fp32), 1 epoch on 60k
  b32    a plain loop slicing batches from one preloaded tensor, fp32, 1 epoch
  bbf16  the same loop with bf16 autocast + channels_last
  bbf16k bbf16 with train.py's malloc setting (keep_freed_memory), so c / bbf16k is Lightning's share alone
  c      `python train.py` with the project's defaults, same net, batch 64, 1 epoch on all 60k
  c32n   `python train.py` forced to fp32, default layout (NHWC): c / c32n is what bf16 alone gains on this CPU
  c32    `python train.py` forced to fp32 and NCHW (to compare with b32 like for like)
  fast   `python train.py experiment=fast` (700 steps of 128; time to >= 99.0% test accuracy)
  a3     the seed baseline, 3 epochs (what `fast` is measured against)
Medians over rounds are reported, with the ratios the project promises.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import describe, header, summary

REPO = Path(__file__).resolve().parents[1]
SEED_SCRIPT = REPO.parent / "shared" / "seed_article" / "seed_script.py"  # the article's own, where present
BASELINE = REPO / "benchmarks" / "seed_baseline.py"  # the project's copy of it: what a clone runs


def cases(data: str, seed_script: Path) -> dict[str, list[str]]:
    py = sys.executable
    one_epoch = ["trainer.max_epochs=1", "data.val_size=0", f"data.data_dir={data}", "logger=none"]
    return {  # in this order, so compared cases run back to back (a-c, c-c32n, b32-c32, fast-a3; bbf16k after bbf16)
        "a": [py, str(seed_script), data, "1"],
        "c": [py, "train.py", *one_epoch],
        "c32n": [py, "train.py", *one_epoch, "trainer.precision=32-true"],
        "bbf16": [py, "benchmarks/raw_loop.py", data, "--bf16", "--channels-last"],
        "bbf16k": [py, "benchmarks/raw_loop.py", data, "--bf16", "--channels-last", "--keep-freed-memory"],
        "b32": [py, "benchmarks/raw_loop.py", data],
        "c32": [py, "train.py", *one_epoch, "trainer.precision=32-true", "model.channels_last=false"],
        "fast": [py, "train.py", "experiment=fast", f"data.data_dir={data}"],
        "a3": [py, str(seed_script), data, "3"],
    }


def run(cmd: list[str], out_dir: Path) -> dict[str, float]:
    """Run one case; wall time is the whole process, as a user waits for it."""
    is_train = cmd[1] == "train.py"
    if is_train:
        cmd = [*cmd, f"hydra.run.dir={out_dir}"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"benchmark case failed: {' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    if is_train:
        m = json.loads((out_dir / "metrics.json").read_text())
        return {"imgs_per_s": m["perf/train_images_per_s"], "test_acc": m["test/acc"], "wall_s": wall}
    kv = dict(re.findall(r"(\w+)=([\d.]+)", proc.stdout))
    return {"imgs_per_s": float(kv["imgs_per_s"]), "test_acc": float(kv["test_acc"]) / 100, "wall_s": wall}


def precision(cmd: list[str], out_dir: Path) -> str:
    """The precision a case ran in: train.py's from its saved config, the raw loop's from its flags.

    train.py's default is `${native_precision:...}` (bf16 only where native), saved unresolved: it is resolved
    here, on the same machine, by the project's own resolver. Both seed baselines are fp32.
    """
    if cmd[1] != "train.py":
        return "bf16-mixed" if "--bf16" in cmd else "32-true"
    from omegaconf import OmegaConf

    from mnist_cnn import resolvers

    resolvers.register()
    return str(OmegaConf.select(OmegaConf.load(out_dir / ".hydra" / "config.yaml"), "trainer.precision"))


def baseline_label(path: Path) -> str:
    """Which baseline cases a and a3 ran: results from the two are not interchangeable without saying so."""
    shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    kind = {BASELINE: "the project's seed baseline", SEED_SCRIPT: "the seed article's own script"}
    return f"{shown} ({kind.get(path, 'given by --seed-script')})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=os.environ.get("MNIST_DATA_DIR", str(REPO.parent / "shared" / "data")))
    ap.add_argument("--seed-script", type=Path, help=f"cases a, a3 (default: {SEED_SCRIPT} if present, else "
                    f"{BASELINE.relative_to(REPO)})")  # fmt: skip
    ap.add_argument("--rounds", type=int, default=5)  # the VM drifts: 5 rounds steady the medians
    ap.add_argument("--only", nargs="*", help="run only these cases")
    ap.add_argument("--json", type=Path, help="also write the raw results here")
    args = ap.parse_args()
    seed_script = (args.seed_script or (SEED_SCRIPT if SEED_SCRIPT.is_file() else BASELINE)).resolve()
    if not seed_script.is_file():
        ap.error(f"--seed-script {args.seed_script}: no such file")
    todo = {k: v for k, v in cases(str(Path(args.data_dir).resolve()), seed_script).items()
            if not args.only or k in args.only}  # fmt: skip
    results: dict[str, list[dict[str, float]]] = {k: [] for k in todo}
    precisions: dict[str, list[str]] = {k: [] for k in todo}
    mach = describe()
    print(f"{header(mach)}\nbaseline (cases a, a3): {baseline_label(seed_script)}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):  # interleaved, every case once per round; odd rounds in reverse order
            for name, cmd in list(todo.items())[:: -1 if r % 2 else 1]:
                res = run(cmd, Path(tmp) / f"{name}-{r}")
                results[name].append(res)
                precisions[name].append(precision(cmd, Path(tmp) / f"{name}-{r}"))
                print(f"round {r + 1} {name:6s} " + " ".join(f"{k}={v:.4g}" for k, v in res.items())
                      + f" precision={precisions[name][-1]}", flush=True)  # fmt: skip
    med = {k: {f: statistics.median(x[f] for x in v) for f in v[0]} for k, v in results.items()}
    prec = {k: "/".join(sorted(set(v))) for k, v in precisions.items()}  # one value unless the config changed
    print(f"\nmedians over {args.rounds} rounds ({summary(mach)}):")
    print(f"{'case':6s} {'train img/s':>12s} {'wall s':>8s} {'test acc':>9s}  precision")
    for k, m in med.items():
        print(f"{k:6s} {m['imgs_per_s']:12.0f} {m['wall_s']:8.1f} {m['test_acc']:9.4f}  {prec[k]}")
    ratios = [("c / a   train img/s (target >= 2.2)", "c", "a", "imgs_per_s"),
              ("c / bbf16 train img/s, both bf16+NHWC (target >= 0.90)", "c", "bbf16", "imgs_per_s"),
              ("c / bbf16k train img/s, both also with train.py's malloc setting", "c", "bbf16k", "imgs_per_s"),
              ("c32 / b32 train img/s, both fp32 (target >= 0.90)", "c32", "b32", "imgs_per_s"),
              ("c / c32 train img/s: what train.py's precision rule and layout gain here", "c", "c32", "imgs_per_s"),
              ("c / c32n train img/s, both NHWC: what bf16 alone gains here", "c", "c32n", "imgs_per_s"),
              ("fast / a3 wall (target <= 0.30)", "fast", "a3", "wall_s")]  # fmt: skip
    # The VM drifts by tens of percent between minutes: a ratio of two cases that ran back to back in the same
    # round cancels most of it (the check); the ratio of the two medians is printed beside it.
    print("\nratios: median of the per-round ratios (each round's pair ran back to back) | ratio of medians")
    for label, num, den, field in ratios:
        if num in med and den in med:
            paired = statistics.median(x[field] / y[field] for x, y in zip(results[num], results[den], strict=True))
            print(f"{label}: {paired:.2f} | {med[num][field] / med[den][field]:.2f}")
    if "fast" in med:
        print(f"fast: {med['fast']['wall_s']:.1f} s wall (target <= 20), test acc {med['fast']['test_acc']:.4f}")
    if args.json:
        out = {"machine": summary(mach), **mach, "baseline": baseline_label(seed_script), "precision": prec,
               "rounds": results, "medians": med}  # fmt: skip
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
