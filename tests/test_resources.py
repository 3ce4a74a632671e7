import hashlib
import tarfile
from pathlib import Path

import pytest

from utils import resources
from utils.resources import Archive, Resource, ResourceError, fetch, sha256_file, verify_sha256


def _tarball(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "data.txt").write_text("hello\n")
    path = tmp_path / "fake-1.0.tgz"
    with tarfile.open(path, "w:gz") as tf:
        tf.add(src / "pkg", arcname="pkg")
    return path


@pytest.fixture
def fake_resource(tmp_path, monkeypatch):
    monkeypatch.setenv("REDUNDANCY_CACHE", str(tmp_path / "cache"))
    archive = _tarball(tmp_path)
    calls = []

    def fake_download(arch, dest):
        calls.append(arch.spec)
        dest.mkdir(parents=True, exist_ok=True)
        target = dest / archive.name
        target.write_bytes(archive.read_bytes())
        return target

    monkeypatch.setattr(resources, "_download", fake_download)

    def register(sha):
        res = Resource("fake", "data", (Archive("npm", "fake@1.0", sha),), "pkg/data.txt", "a fake", "none")
        monkeypatch.setitem(resources.RESOURCES, "fake", res)

    return archive, register, calls


def test_sha256_file_matches_hashlib(tmp_path):
    p = tmp_path / "x.bin"
    p.write_bytes(b"abc" * 1000)
    assert sha256_file(p) == hashlib.sha256(b"abc" * 1000).hexdigest()


def test_fetch_unpacks_and_is_idempotent(fake_resource):
    archive, register, calls = fake_resource
    register(sha256_file(archive))
    path = fetch("fake")
    assert path.read_text() == "hello\n"
    assert fetch("fake") == path
    assert calls == ["fake@1.0"]  # the second call neither downloads nor unpacks


def test_sha256_mismatch_is_refused_with_a_clear_error(fake_resource):
    archive, register, _ = fake_resource
    register("0" * 64)
    with pytest.raises(ResourceError, match="sha256 mismatch.*delete it"):
        fetch("fake")
    with pytest.raises(ResourceError, match="expected 0000"):
        verify_sha256(archive, "0" * 64)


def test_unknown_resource_lists_the_known_ones():
    with pytest.raises(KeyError, match="minilm"):
        fetch("no-such-thing")


def test_registry_pins_every_archive():
    for res in resources.RESOURCES.values():
        for a in res.archives:
            assert len(a.sha256) == 64 and int(a.sha256, 16) >= 0
            assert ("==" in a.spec) if a.client.startswith("pip") else ("@" in a.spec)
