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


def test_unpacked_files_are_recorded_and_rechecked(fake_resource):
    archive, register, calls = fake_resource
    register(sha256_file(archive))
    path = fetch("fake")
    record = (path.parent.parent / resources.RECORD_FILE).read_text()
    assert "pkg/data.txt" in record and hashlib.sha256(b"hello\n").hexdigest() in record
    path.write_text("hellp\n")  # altered after unpacking
    with pytest.warns(UserWarning, match="pkg/data.txt was modified since unpacking.*unpacking it again"):
        again = fetch("fake")
    assert again.read_text() == "hello\n"
    assert calls == ["fake@1.0"]  # unpacked again from the archive already in the cache


def test_a_file_added_to_an_unpacked_folder_is_noticed(fake_resource, monkeypatch):
    archive, _, _ = fake_resource
    folder_res = Resource("fake", "data", (Archive("npm", "fake@1.0", sha256_file(archive)),), "pkg", "a fake", "none")
    monkeypatch.setitem(resources.RESOURCES, "fake", folder_res)
    folder = fetch("fake")
    (folder / "extra.txt").write_text("x")
    with pytest.warns(UserWarning, match=r"were added \['pkg/extra.txt'\]"):
        assert fetch("fake") == folder
    assert not (folder / "extra.txt").exists() and (folder / "data.txt").read_text() == "hello\n"


def test_unpacked_by_an_older_version_is_unpacked_again(fake_resource):
    archive, register, _ = fake_resource
    register(sha256_file(archive))
    path = fetch("fake")
    (path.parent.parent / resources.RECORD_FILE).unlink()
    path.write_text("stale\n")
    with pytest.warns(UserWarning, match="no readable record"):
        assert fetch("fake").read_text() == "hello\n"


def test_offline_reason(monkeypatch):
    import socket

    monkeypatch.setattr(resources, "_REACHABLE", {})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resources.offline_reason() == "HF_HUB_OFFLINE is set"
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    with socket.socket() as server:  # a real listening socket stands for a reachable hub
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
        assert resources.offline_reason() is None
    resources._REACHABLE.clear()  # the answer is remembered for a minute; ask again now that the port is closed
    assert f"127.0.0.1:{port} is not reachable" in resources.offline_reason()
