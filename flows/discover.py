"""Stage 1 — discover: which transfer folders are in the inbox (DTS §2.1)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flows.registry import Source

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class TransferRef:
    """A transfer folder `inbox/<source>/<folder>/` as found, before anything is read."""

    source: str
    folder: str
    path: Path

    @property
    def has_manifest(self) -> bool:
        # A folder without its manifest is still being uploaded (pending).
        # A linked manifest is there (and rejected when verified, never followed).
        return (self.path / MANIFEST).is_symlink() or (self.path / MANIFEST).is_file()


@dataclass(frozen=True)
class Discovery:
    transfers: list[TransferRef]
    warnings: list[str]


def discover_transfers(inbox: Path, sources: dict[str, Source], only: set[str] | None = None) -> Discovery:
    """Transfer folders of registered sources, oldest first within a source.

    Folders of unregistered sources and stray files are reported, never read.
    """
    if not inbox.is_dir():
        raise FileNotFoundError(f"inbox {inbox} is not a folder")
    transfers: list[TransferRef] = []
    warnings: list[str] = []
    for entry in sorted(inbox.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_symlink():
            warnings.append(f"{entry.name}: a symbolic link in the inbox is never followed")
            continue
        if not entry.is_dir():
            warnings.append(f"{entry.name}: a stray file at the top of the inbox; ignored")
            continue
        if entry.name not in sources:
            warnings.append(f"{entry.name}: not a registered source (schemas/sources.yaml); ignored")
            continue
        if only is not None and entry.name not in only:
            continue
        for folder in sorted(entry.iterdir()):
            if folder.name.startswith("."):
                continue
            if folder.is_symlink() or not folder.is_dir():
                warnings.append(f"{entry.name}/{folder.name}: not a transfer folder; ignored")
                continue
            transfers.append(TransferRef(entry.name, folder.name, folder))
    return Discovery(transfers, warnings)
