"""A wheelhouse in pieces of at most N bytes (folders piece-01 .. piece-K), and joined back, every file verified.

A wheel larger than a piece is cut into byte chunks `NAME.whl.part-000`, `-001`, ... The manifest (in piece-01,
with SHA256SUMS and rejoin.sh, a pure-shell fallback) names every file's sha256 and size, and where its bytes are.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from ..errors import WheelhouseError

MANIFEST_NAME = "manifest.json"
SUMS_NAME = "SHA256SUMS"
SHELL_NAME = "rejoin.sh"
_RESERVED = 1 << 20  # room left in piece-01 for the manifest, SHA256SUMS and rejoin.sh
SHELL = """#!/bin/sh
# Rejoin a wheelhouse without Python: sh rejoin.sh INTO PIECE_DIR...  (then: cd INTO && sha256sum -c SHA256SUMS)
set -eu
into=$1; shift
mkdir -p "$into"
for d in "$@"; do
  for f in "$d"/*; do
    case "$f" in *.part-[0-9][0-9][0-9]) ;; *) cp "$f" "$into"/ ;; esac
  done
done
for whole in $(cd "$into" && sed -n 's/^[0-9a-f]*  //p' SHA256SUMS); do
  [ -e "$into/$whole" ] && continue
  parts=$(for d in "$@"; do ls "$d/$whole".part-* 2>/dev/null || true; done | awk -F'.part-' '{print $NF" "$0}' | sort -n | cut -d' ' -f2-)
  [ -n "$parts" ] || { echo "missing: $whole (no file and no part of it in the pieces)" >&2; exit 1; }
  cat $parts > "$into/$whole"
done
cd "$into" && sha256sum -c --quiet SHA256SUMS && echo "wheelhouse complete: $into"
"""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def split(files: list[Path], out: Path, limit: int, manifest: dict[str, Any]) -> list[Path]:
    """Copy `files` into out/piece-NN folders of at most `limit` bytes each (largest first, first fit; a file over
    the limit in chunks of `limit` bytes), record where each file's bytes are in `manifest["files"]` (by filename)
    and write the manifest, SHA256SUMS and rejoin.sh into piece-01. Returns the piece folders."""
    if limit <= _RESERVED:
        raise WheelhouseError(f"a piece of {limit} bytes leaves no room for the manifest")
    entries = {e["filename"]: e for e in manifest["files"]}
    sizes = [_RESERVED]  # bytes used per piece
    placed: list[list[tuple[Path, str, int, int]]] = [[]]  # per piece: (source, name there, offset, length)
    for path in sorted(files, key=lambda p: (-p.stat().st_size, p.name)):
        size = path.stat().st_size
        chunks = [(path.name, 0, size)] if size <= limit else [
            (f"{path.name}.part-{i:03d}", off, min(limit, size - off)) for i, off in enumerate(range(0, size, limit))]
        entries[path.name]["parts"] = []
        for name, offset, length in chunks:
            index = next((i for i, used in enumerate(sizes) if used + length <= limit), None)
            if index is None:
                sizes.append(0)
                placed.append([])
                index = len(sizes) - 1
            sizes[index] += length
            placed[index].append((path, name, offset, length))
            entries[path.name]["parts"].append(f"piece-{index + 1:02d}/{name}")
    dirs = []
    for i, items in enumerate(placed):
        folder = out / f"piece-{i + 1:02d}"
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        for source, name, offset, length in items:
            with source.open("rb") as src, (folder / name).open("wb") as dst:
                src.seek(offset)
                _copy(src, dst, length)
        dirs.append(folder)
    manifest["pieces"] = {d.name: sum(f.stat().st_size for f in d.iterdir()) for d in dirs}
    write_manifest(dirs[0], manifest)
    manifest["pieces"][dirs[0].name] = sum(f.stat().st_size for f in dirs[0].iterdir())
    write_manifest(dirs[0], manifest)  # with piece-01's final size (the manifest's own size barely changes)
    return dirs


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    (folder / SUMS_NAME).write_text("".join(f"{e['sha256']}  {e['filename']}\n" for e in manifest["files"]))
    (folder / SHELL_NAME).write_text(SHELL)


def _copy(src: Any, dst: Any, length: int) -> None:
    while length > 0:
        block = src.read(min(length, 1 << 20))
        if not block:
            break
        dst.write(block)
        length -= len(block)


def rejoin(pieces: list[Path], into: Path) -> dict[str, Any]:
    """Join pieces into one wheelhouse folder `into`, verifying every file's size and sha256 against the manifest.
    WheelhouseError naming the file on a missing piece or chunk, or on a mismatch; returns the manifest."""
    found = [p / MANIFEST_NAME for p in pieces if (p / MANIFEST_NAME).is_file()]
    if not found:
        raise WheelhouseError(f"no {MANIFEST_NAME} in {', '.join(map(str, pieces))}: piece-01 holds it; is it missing?")
    manifest = json.loads(found[0].read_text())
    by_name = {p.name: p for p in pieces}
    for piece in manifest.get("pieces", {}):
        if piece not in by_name:
            raise WheelhouseError(f"piece {piece} is missing (given: {', '.join(sorted(by_name))})")
    into.mkdir(parents=True, exist_ok=True)
    for entry in manifest["files"]:
        target = into / entry["filename"]
        with target.open("wb") as out:
            for part in entry["parts"]:
                piece, name = part.split("/", 1)
                source = by_name[piece] / name
                if not source.is_file():
                    out.close()
                    target.unlink()
                    raise WheelhouseError(f"{entry['filename']}: its part {part} is missing ({source})")
                with source.open("rb") as src:
                    shutil.copyfileobj(src, out, 1 << 20)
        verify(target, entry)
    write_manifest(into, manifest)
    return manifest


def verify(path: Path, entry: dict[str, Any]) -> None:
    size, digest = path.stat().st_size, sha256(path)
    if size != entry["size"] or digest != entry["sha256"]:
        raise WheelhouseError(f"{path.name}: sha256 {digest} ({size} bytes) is not the manifest's {entry['sha256']} "
                              f"({entry['size']} bytes): a corrupt or incomplete copy; send its piece again")
