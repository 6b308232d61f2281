"""Safe extraction of a user's dataset archive (zip) into a fresh folder under the data root.

An archive from a browser upload is untrusted: entries may climb out of the target (`../x`,
absolute paths: "zip slip"), be links, or expand to far more than they weigh (decompression
bombs). We extract only regular image files, each checked to land inside a new directory, and
stop as soon as the total written or any entry's compression ratio passes its limit.
"""

from __future__ import annotations

import re
import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath

from .errors import DataError
from .fileio import atomic_write_json, read_json

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
MAX_ARCHIVE_BYTES = 200 * 1024**2
MAX_EXTRACTED_BYTES = 2 * 1024**3
MAX_RATIO = 200  # a JPEG/PNG barely compresses; 200x is a bomb
MAX_FILES = 200_000
MAX_UPLOADS_BYTES = 10 * 1024**3  # all uploads kept in the data root together
FREE_SPACE_MARGIN = 512 * 1024**2  # never fill the disk the runs are written to
LEDGER = ".e2vpt-uploads.json"  # {folder name: bytes extracted}, to enforce the total quota cheaply


def uploads_bytes(data_root: Path) -> int:
    """Bytes held by earlier uploads that still exist under `data_root` (from the ledger)."""
    ledger = read_json(data_root / LEDGER, {})
    if not isinstance(ledger, dict):
        return 0
    return sum(int(v) for k, v in ledger.items() if isinstance(v, int) and (data_root / str(k)).is_dir())


def _record_upload(data_root: Path, folder: Path, size: int) -> None:
    ledger = read_json(data_root / LEDGER, {})
    ledger = {k: v for k, v in ledger.items() if (data_root / str(k)).is_dir()} if isinstance(ledger, dict) else {}
    ledger[folder.name] = size
    atomic_write_json(data_root / LEDGER, ledger)


def _safe_name(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip(".-")
    return cleaned or "upload"


def safe_extract_zip(archive: str | Path, data_root: str | Path, name: str | None = None,
                     max_archive_bytes: int = MAX_ARCHIVE_BYTES, max_extracted_bytes: int = MAX_EXTRACTED_BYTES,
                     max_ratio: float = MAX_RATIO, max_uploads_bytes: int = MAX_UPLOADS_BYTES
                     ) -> tuple[Path, list[str]]:
    """Extract the image files of `archive` into a new folder under `data_root`.

    Returns (the new folder, the entries skipped with their reason). Raises DataError, leaving
    nothing behind, for an archive that is too large, not a zip, hostile, holds no image, or would
    take the uploads kept in the data root past `max_uploads_bytes` or the disk past its free space.
    """
    archive, data_root = Path(archive), Path(data_root).resolve()
    if not archive.is_file():
        raise DataError(f"archive {archive} does not exist")
    if archive.stat().st_size > max_archive_bytes:
        raise DataError(f"archive is {archive.stat().st_size / 1e6:.0f} MB, over the {max_archive_bytes / 1e6:.0f} MB "
                        "limit; upload a smaller subset or place the folder under the data root yourself")
    if not zipfile.is_zipfile(archive):
        raise DataError(f"{archive.name} is not a zip archive")
    data_root.mkdir(parents=True, exist_ok=True)
    base = _safe_name(name or archive.stem)
    target = data_root / base
    suffix = 1
    while target.exists():
        suffix += 1
        target = data_root / f"{base}-{suffix}"
    try:
        with zipfile.ZipFile(archive) as zf:  # sizes as declared (checked again while writing: they can lie)
            declared = sum(i.file_size for i in zf.infolist()
                           if PurePosixPath(i.filename).suffix.lower() in IMAGE_SUFFIXES)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"cannot read {archive.name}: {exc}") from None
    held = uploads_bytes(data_root)
    if held + declared > max_uploads_bytes:
        raise DataError(f"the uploads kept in {data_root} hold {held / 1e9:.2f} GB and this archive expands to "
                        f"{declared / 1e9:.2f} GB, over the {max_uploads_bytes / 1e9:.1f} GB quota for uploads; "
                        "delete uploaded folders you no longer need")
    max_extracted_bytes = min(max_extracted_bytes, max_uploads_bytes - held)
    free = shutil.disk_usage(data_root).free - FREE_SPACE_MARGIN
    if declared > free:
        raise DataError(f"this archive expands to {declared / 1e9:.2f} GB but the disk has {max(free, 0) / 1e9:.2f} GB "
                        "to spare; free some space first")
    target.mkdir()
    skipped: list[str] = []
    written = 0
    try:
        with zipfile.ZipFile(archive) as zf:
            entries = zf.infolist()
            if len(entries) > MAX_FILES:
                raise DataError(f"archive has {len(entries)} entries, over the {MAX_FILES} limit")
            for info in entries:
                path = PurePosixPath(info.filename.replace("\\", "/"))
                if info.filename.startswith(("/", "\\")) or (path.parts and ":" in path.parts[0]) or ".." in path.parts:
                    raise DataError(f"archive entry '{info.filename}' points outside the archive (zip slip); "
                                    "refusing the whole archive")
                if info.is_dir():
                    continue
                file_type = stat.S_IFMT(info.external_attr >> 16)  # 0 when the archiver stored no type
                if file_type and file_type != stat.S_IFREG:
                    skipped.append(f"{info.filename}: not a regular file (link or device)")
                    continue
                if path.suffix.lower() not in IMAGE_SUFFIXES:
                    skipped.append(f"{info.filename}: not an image file")
                    continue
                if info.compress_size and info.file_size / info.compress_size > max_ratio:
                    raise DataError(f"archive entry '{info.filename}' expands {info.file_size / info.compress_size:.0f}x "
                                    "(a decompression bomb?); refusing the archive")
                destination = (target / Path(*path.parts)).resolve()
                if target.resolve() not in destination.parents:
                    raise DataError(f"archive entry '{info.filename}' would land outside {target}; refusing the archive")
                destination.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(destination, "wb") as dst:
                    while chunk := src.read(1 << 20):  # count real bytes: headers can lie about sizes
                        written += len(chunk)
                        if written > max_extracted_bytes:
                            raise DataError(f"archive expands past {max_extracted_bytes / 1e9:.2f} GB, the most "
                                            "this upload may take; refusing it")
                        dst.write(chunk)
        if not any(p.is_file() for p in target.rglob("*")):
            listed = "; ".join(skipped[:3]) + ("; ..." if len(skipped) > 3 else "")
            raise DataError(f"{archive.name} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})"
                            + (f": {listed}" if listed else "") + "; nothing was added")
        _record_upload(data_root, target, written)
    except (DataError, zipfile.BadZipFile, OSError) as exc:
        shutil.rmtree(target, ignore_errors=True)
        if isinstance(exc, DataError):
            raise
        raise DataError(f"cannot extract {archive.name}: {exc}") from None
    return target, skipped
