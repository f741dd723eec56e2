"""The Function App code bundle: a zip of functions/ with its dependencies vendored for
Linux x86-64, CPython 3.11 (binary wheels for that platform), deterministic: the same
sources and requirements give the same bytes, so the content hash drives redeployment.

    python -m infra.bundle --out dist/function.zip
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS_DIR = ROOT / "functions"
CACHE_DIR = ROOT / ".bundle"
SITE_PACKAGES = ".python_packages/lib/site-packages"
PLATFORM_ARGS = ["--platform", "manylinux_2_28_x86_64", "--platform", "manylinux2014_x86_64", "--python-version", "3.11", "--implementation", "cp",
                 "--only-binary=:all:"]
EXCLUDED_DIRS = {"__pycache__", ".python_packages", ".pytest_cache", ".mypy_cache"}
EXCLUDED_FILES = {"local.settings.json"}
FIXED_TIME = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class Bundle:
    path: Path
    sha256: str


def vendor(requirements: Path, cache_dir: Path = CACHE_DIR) -> Path:
    """pip-install the requirements for the Functions platform into a cached folder."""
    key = hashlib.sha256(requirements.read_bytes() + " ".join(PLATFORM_ARGS).encode()).hexdigest()[:16]
    target = cache_dir / f"site-packages-{key}"
    if target.exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache_dir, prefix="vendor-"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile",
                    "--target", str(tmp), *PLATFORM_ARGS, "-r", str(requirements)], check=True)
    os.replace(tmp, target)
    return target


def _files(base: Path) -> list[tuple[str, Path]]:
    out = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDED_DIRS)
        for f in filenames:
            if f in EXCLUDED_FILES or f.endswith(".pyc"):
                continue
            path = Path(dirpath) / f
            out.append((path.relative_to(base).as_posix(), path))
    return out


def build(out: Path, functions_dir: Path = FUNCTIONS_DIR, site_packages: Path | None = None) -> Bundle:
    """Write the zip; entries sorted, fixed timestamps and modes, so bytes are reproducible."""
    entries = _files(functions_dir)
    if site_packages is not None:
        entries += [(f"{SITE_PACKAGES}/{name}", path) for name, path in _files(site_packages)]
    entries.sort(key=lambda e: e[0])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for name, path in entries:
            info = zipfile.ZipInfo(name, date_time=FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            mode = 0o755 if os.access(path, os.X_OK) and path.suffix in ("", ".so", ".sh") else 0o644
            info.external_attr = (0o100000 | mode) << 16
            info.create_system = 3
            zf.writestr(info, path.read_bytes())
    os.replace(tmp, out)
    return Bundle(path=out, sha256=hashlib.sha256(out.read_bytes()).hexdigest())


def build_for_deploy(out_dir: Path = ROOT / "dist") -> Bundle:
    """Vendored and zipped; reuses the zip when its inputs did not change."""
    site_packages = vendor(FUNCTIONS_DIR / "requirements.txt")
    h = hashlib.sha256()
    for name, path in _files(FUNCTIONS_DIR):
        h.update(name.encode())
        h.update(path.read_bytes())
    h.update(site_packages.name.encode())
    out = out_dir / f"function-{h.hexdigest()[:16]}.zip"
    if out.exists():
        return Bundle(path=out, sha256=hashlib.sha256(out.read_bytes()).hexdigest())
    for old in out_dir.glob("function-*.zip"):
        old.unlink()
    return build(out, FUNCTIONS_DIR, site_packages)


def main() -> None:
    parser = argparse.ArgumentParser(description="Build the Function App zip bundle.")
    parser.add_argument("--out", type=Path, default=ROOT / "dist" / "function.zip")
    args = parser.parse_args()
    bundle = build(args.out, FUNCTIONS_DIR, vendor(FUNCTIONS_DIR / "requirements.txt"))
    print(f"{bundle.path} {bundle.path.stat().st_size / 1e6:.1f} MB sha256={bundle.sha256}")


if __name__ == "__main__":
    main()
