"""Build ``.gpu-kit/``: what a lent GPU machine lacks to run ``bench/gpu_suite.sh``, small enough to carry.

    python bench/gpu_kit.py            # here, with PyPI reachable; then, through the device tool:
    run(command="bash bench/gpu_suite.sh", carry=[".gpu-kit"], timeout_s=570)

Why a kit: the lent machine (an H200 image with torch, transformers, accelerate, sentence-transformers,
pandas, ... but no bitsandbytes, trl, peft pin, pydantic or datasets) reaches no registry, and what
travels is capped at 64 MiB with the repository. So the kit holds:

* wheels for CPython 3.12 on manylinux x86-64 of the packages the benches and the harness import and the
  image lacks (``WHEELS``), pinned to the versions this project is tested with, except ``datasets``,
  ``dill`` and ``multiprocess``: the image's ``huggingface_hub`` is 1.x, which ``datasets`` 4.8 accepts;
* bitsandbytes slimmed to its CPU and CUDA 13 libraries (the image's torch is built for CUDA 13): the
  wheel's other CUDA builds are 110 of its 129 MB unpacked;
* the default model's tokenizer (``tokenizer/``): ``bench/shapes.py`` builds the random-init 1B/7B
  checkpoints with it (``ADAPTBENCH_SHAPE_TOKENIZER``), since the model's GGUF wheel (94 MB) cannot travel.

The machine's own torch and transformers are used (the suite prints their versions).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

WHEELS = (
    "bitsandbytes==0.50.2",
    "peft==0.21.2",
    "trl==1.16.0",
    "liger-kernel==0.8.5",
    "pydantic==2.14.4",
    "pydantic-core==2.50.5",
    "annotated-types==0.8.0",
    "typing-inspection==0.4.5",
    "datasets==4.8.0",
    "dill==0.4.1",
    "multiprocess==0.70.19",
    "evaluate==0.4.6",
)
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
)
KEEP_BNB = ("libbitsandbytes_cpu.so", "libbitsandbytes_cuda130.so", "libbitsandbytes_cuda132.so")
LIMIT = 64 * 2**20  # what the device tool carries, the repository included


def download(folder: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
    cmd += ["--python-version", "3.12", "--implementation", "cp", "-d", str(folder)]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    subprocess.run(cmd + list(WHEELS), check=True)


def _dropped(path: str) -> bool:
    """A bitsandbytes native library the machine cannot load."""
    name = Path(path).name
    return name.startswith("libbitsandbytes_") and name not in KEEP_BNB


def slim_bitsandbytes(folder: Path) -> None:
    """Rewrite the bitsandbytes wheel without the native libraries the machine cannot load (RECORD too)."""
    (wheel,) = folder.glob("bitsandbytes-*.whl")
    tmp = wheel.with_suffix(".slim")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            if _dropped(item.filename):
                continue
            data = src.read(item)
            if item.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines()
                data = "\n".join(line for line in lines if not _dropped(line.split(",")[0])).encode()
            dst.writestr(item, data)
    tmp.replace(wheel)


def save_tokenizer(folder: Path) -> None:
    from bench.shapes import shape_tokenizer

    shape_tokenizer().save_pretrained(folder)


def tracked_bytes() -> int:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    return sum((REPO / f).stat().st_size for f in files.decode().split("\0") if f and (REPO / f).is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(REPO / ".gpu-kit"), help="kit folder (git-ignored)")
    args = ap.parse_args()
    out = Path(args.out)
    wheels, tok = out / "wheels", out / "tokenizer"
    with tempfile.TemporaryDirectory() as scratch:
        download(Path(scratch))
        slim_bitsandbytes(Path(scratch))
        if wheels.exists():
            for old in wheels.iterdir():
                old.unlink()
        wheels.mkdir(parents=True, exist_ok=True)
        for whl in sorted(Path(scratch).glob("*.whl")):
            whl.replace(wheels / whl.name)
    save_tokenizer(tok)
    files = sorted(p for p in out.rglob("*") if p.is_file() and p.name != "KIT.json")
    kit = {
        "wheels": list(WHEELS),
        "files": {
            str(p.relative_to(out)): {
                "bytes": p.stat().st_size,
                "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
            }
            for p in files
        },
    }
    (out / "KIT.json").write_text(json.dumps(kit, indent=2))
    size = sum(p.stat().st_size for p in files)
    total = size + tracked_bytes()
    print(f"{out}: {len(files)} files, {size / 2**20:.1f} MiB; with the repository {total / 2**20:.1f} MiB")
    if total > LIMIT:
        raise SystemExit(f"over the device tool's {LIMIT // 2**20} MiB: drop a wheel from WHEELS")


if __name__ == "__main__":
    main()
