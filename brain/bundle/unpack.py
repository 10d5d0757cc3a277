"""Stage a bundle archive into a slot directory, verifying every byte on the way.

The archive is hostile until proven otherwise: the TUF hash covers the archive file, but a
side-loaded bundle or a bug upstream could still hand us path traversal, links, devices,
duplicate names or oversize members.  So members are read as a stream, checked against the
manifest (which must come first), hashed while written, and nothing lands in ``dest`` until all
of it has been verified and fsynced: the files are staged in a sibling directory that is
renamed over the (empty) ``dest`` in one step.  A crash leaves at most a ``.NAME.unpack-*``
sibling, which :func:`clean_staging` removes.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import tarfile
import tempfile
from pathlib import Path
from typing import IO

from brain.bundle.content import SNIFF_BYTES, forbidden_content
from brain.bundle.manifest import (
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    SIGNATURE_NAME,
    BundleError,
    EdgeManifest,
    parse_manifest,
)
from brain.bundle.onnx_check import check_onnx_bytes
from common.durable import fsync_dir, move

DEFAULT_MAX_BYTES = 1 << 30  # 1 GiB: far above any Pi-sized policy, far below the SD card
MAX_SIGNATURE_BYTES = 4096
_CHUNK = 1 << 20
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
STAGING_MARK = ".unpack-"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _copy_member(src: IO[bytes], dst: Path, size: int, *, sniff: bool) -> str:
    """Copy exactly ``size`` bytes to a new file ``dst`` (fsynced); returns the sha256."""
    h = hashlib.sha256()
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        remaining = size
        first = True
        while remaining:
            chunk = src.read(min(_CHUNK, remaining))
            if not chunk:
                got = size - remaining
                raise BundleError(f"{dst.name}: archive truncated ({got}/{size} bytes)")
            if first and sniff:
                what = forbidden_content(chunk[:SNIFF_BYTES])
                if what:
                    raise BundleError(f"{dst.name}: content is {what}, not a model")
            first = False
            h.update(chunk)
            _write_all(fd, chunk)
            remaining -= len(chunk)
        os.fsync(fd)
    finally:
        os.close(fd)
    return h.hexdigest()


def _check_member(m: tarfile.TarInfo, seen: set[str]) -> None:
    name = m.name
    if name in seen:
        raise BundleError(f"archive member {name!r} appears twice")
    if name.startswith("/") or "\\" in name:
        raise BundleError(f"archive member {name!r} has an absolute or odd path")
    if "/" in name or name in ("", ".", ".."):
        raise BundleError(
            f"archive member {name!r}: path traversal or directories are not allowed "
            "(a bundle is flat)"
        )
    if m.issym() or m.islnk():
        raise BundleError(f"archive member {name!r} is a link")
    if m.isdev() or m.isfifo():
        raise BundleError(f"archive member {name!r} is a device or fifo")
    if m.type not in (tarfile.REGTYPE, tarfile.AREGTYPE) or m.issparse():
        raise BundleError(f"archive member {name!r} is not a regular file (type {m.type!r})")
    if m.mode & 0o111:
        raise BundleError(f"archive member {name!r} is executable; bundles hold nothing executable")


def _open_archive(archive: Path) -> tarfile.TarFile:
    try:
        # Streaming mode ("r|*"): members are read in order, exactly once, which is what
        # lets us insist on the manifest coming first and never seek back.
        return tarfile.open(archive, mode="r|*")
    except FileNotFoundError:
        raise BundleError(f"{archive}: no such bundle") from None
    except (tarfile.TarError, OSError) as exc:
        raise BundleError(f"{archive}: not a bundle archive ({exc})") from None


def _stage(archive: Path, stage: Path, max_bytes: int) -> EdgeManifest:
    manifest: EdgeManifest | None = None
    seen: set[str] = set()
    total = 0
    with _open_archive(archive) as tar:
        for m in tar:
            _check_member(m, seen)
            seen.add(m.name)
            total += m.size
            if total > max_bytes:
                raise BundleError(f"{archive}: content exceeds the {max_bytes}-byte limit")
            src = tar.extractfile(m)
            assert src is not None  # regular file, checked above
            if manifest is None:
                if m.name != MANIFEST_NAME:
                    raise BundleError(
                        f"{archive}: first member must be {MANIFEST_NAME}, got {m.name!r}"
                    )
                if m.size > MAX_MANIFEST_BYTES:
                    raise BundleError(f"{archive}: {MANIFEST_NAME} is oversize ({m.size} bytes)")
                data = src.read(m.size)
                manifest = parse_manifest(data, f"{archive}:{MANIFEST_NAME}")
                if manifest.total_size() + len(data) > max_bytes:
                    raise BundleError(
                        f"{archive}: manifest declares {manifest.total_size()} bytes, over the "
                        f"{max_bytes}-byte limit"
                    )
                _check_space(stage.parent, manifest.total_size())
                fd = os.open(stage / MANIFEST_NAME, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                try:
                    _write_all(fd, data)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                continue
            if m.name == SIGNATURE_NAME:
                if m.size > MAX_SIGNATURE_BYTES:
                    raise BundleError(f"{archive}: {SIGNATURE_NAME} is oversize")
                _copy_member(src, stage / m.name, m.size, sniff=False)
                continue
            entry = manifest.artifacts.get(m.name)
            if entry is None:
                raise BundleError(f"{archive}: unexpected file {m.name!r} (not in the manifest)")
            if m.size != entry.size:
                raise BundleError(
                    f"{archive}: {m.name} is {m.size} bytes, the manifest says {entry.size}"
                )
            digest = _copy_member(src, stage / m.name, m.size, sniff=True)
            if digest != entry.sha256:
                raise BundleError(f"{archive}: {m.name} sha256 mismatch (corrupt or tampered)")
    if manifest is None:
        raise BundleError(f"{archive}: empty archive (no {MANIFEST_NAME})")
    missing = sorted(set(manifest.artifacts) - seen)
    if missing:
        raise BundleError(f"{archive}: files listed in the manifest are missing: {missing}")
    check_models(stage, manifest)
    return manifest


def check_models(directory: Path, manifest: EdgeManifest) -> None:
    """Every ONNX artifact must be self-contained (brain.bundle.onnx_check)."""
    for name in sorted(manifest.artifacts):
        if name.endswith(".onnx"):
            check_onnx_bytes((directory / name).read_bytes(), name)


def _check_space(where: Path, need: int) -> None:
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        return
    if free < need:
        raise BundleError(f"no space left on device: need {need} bytes, {free} free in {where}")


def unpack_bundle(
    archive: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> EdgeManifest:
    """Verify and stage ``archive`` into ``dest`` (missing or empty); returns its manifest.

    On any failure (including a full disk) ``dest`` is left as it was and nothing staged
    remains.  On success ``dest`` holds the manifest, the artifacts and, if the archive had
    one, ``edge_manifest.sig``, all fsynced, as is the parent directory entry.
    """
    archive, dest = Path(archive), Path(dest)
    if dest.exists():
        if not dest.is_dir() or dest.is_symlink():
            raise BundleError(f"{dest}: destination exists and is not a directory")
        if any(dest.iterdir()):
            raise BundleError(f"{dest}: destination is not empty (clear the slot first)")
    parent = dest.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(dir=parent, prefix=f".{dest.name}{STAGING_MARK}"))
    except OSError as exc:
        raise _os_error(exc, f"cannot create a staging directory in {parent}") from None
    try:
        manifest = _stage(archive, stage, max_bytes)
        os.chmod(stage, 0o755)
        fsync_dir(stage)
        # rename(2) atomically replaces an empty directory.
        move(stage, dest)
        return manifest
    except BundleError:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    except OSError as exc:
        shutil.rmtree(stage, ignore_errors=True)
        raise _os_error(exc, f"cannot unpack {archive}") from None
    except (tarfile.TarError, EOFError) as exc:
        shutil.rmtree(stage, ignore_errors=True)
        raise BundleError(f"{archive}: corrupt archive ({exc})") from None
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _os_error(exc: OSError, what: str) -> BundleError:
    if exc.errno in _NO_SPACE:
        return BundleError(f"{what}: no space left on device ({exc.strerror})")
    return BundleError(f"{what}: {exc.strerror or exc}")


def read_archive_manifest(archive: str | os.PathLike[str]) -> EdgeManifest:
    """The manifest of a bundle archive, without unpacking (publishing, ``ota status``)."""
    archive = Path(archive)
    try:
        with _open_archive(archive) as tar:
            for m in tar:
                _check_member(m, set())
                if m.name != MANIFEST_NAME:
                    break
                if m.size > MAX_MANIFEST_BYTES:
                    raise BundleError(f"{archive}: {MANIFEST_NAME} is oversize ({m.size} bytes)")
                src = tar.extractfile(m)
                assert src is not None
                return parse_manifest(src.read(m.size), f"{archive}:{MANIFEST_NAME}")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise BundleError(f"{archive}: corrupt archive ({exc})") from None
    raise BundleError(f"{archive}: first member must be {MANIFEST_NAME}")


def clean_staging(parent: str | os.PathLike[str]) -> list[Path]:
    """Remove staging directories a crash left in ``parent``; returns what was removed."""
    removed = []
    for p in Path(parent).glob(f".*{STAGING_MARK}*"):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def verify_bundle_dir(
    directory: str | os.PathLike[str], *, allow_signature: bool = True
) -> EdgeManifest:
    """Re-check an unpacked bundle (a slot at boot): exact file set, file types, sizes, hashes."""
    d = Path(directory)
    try:
        st = d.lstat()
    except OSError as exc:
        raise BundleError(f"{d}: cannot read bundle directory ({exc.strerror})") from None
    if not stat.S_ISDIR(st.st_mode):
        raise BundleError(f"{d}: not a directory")
    mpath = d / MANIFEST_NAME
    if mpath.is_symlink():
        raise BundleError(f"{mpath}: is a link")
    from brain.bundle.manifest import read_manifest

    manifest = read_manifest(mpath)
    allowed = {MANIFEST_NAME, *manifest.artifacts}
    if allow_signature:
        allowed.add(SIGNATURE_NAME)
    present = {p.name for p in d.iterdir()}
    unexpected = sorted(present - allowed)
    if unexpected:
        raise BundleError(f"{d}: unexpected files {unexpected}")
    for name, entry in manifest.artifacts.items():
        p = d / name
        try:
            pst = p.lstat()
        except FileNotFoundError:
            raise BundleError(f"{d}: {name} is missing") from None
        if not stat.S_ISREG(pst.st_mode):
            raise BundleError(f"{p}: not a regular file")
        if pst.st_size != entry.size:
            raise BundleError(f"{p}: {pst.st_size} bytes, the manifest says {entry.size}")
        h = hashlib.sha256()
        with open(p, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        if h.hexdigest() != entry.sha256:
            raise BundleError(f"{p}: sha256 mismatch (corrupt or tampered)")
    check_models(d, manifest)
    return manifest
