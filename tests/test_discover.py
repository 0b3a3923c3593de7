"""flows/discover.py: which transfer folders are in the inbox (DTS §2.1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.discover import MANIFEST, TransferRef, discover_transfers
from flows.registry import Source, load_registry
from tests.helpers import source

SOURCES: dict[str, Source] = {"S01": source("S01"), "S02": source("S02")}


def make_folder(inbox: Path, source_id: str, folder: str, manifest: bool = True) -> Path:
    path = inbox / source_id / folder
    path.mkdir(parents=True)
    if manifest:
        (path / MANIFEST).write_text("{}", encoding="utf-8")
    return path


def test_transfer_folders_of_registered_sources_are_found_oldest_first(tmp_path: Path) -> None:
    for folder in ("20261127T020000Z", "20261001T020000Z", "20261113T020000Z"):
        make_folder(tmp_path, "S01", folder)
    make_folder(tmp_path, "S02", "20261002T020000Z")
    found = discover_transfers(tmp_path, SOURCES)
    assert [(t.source, t.folder) for t in found.transfers] == [
        ("S01", "20261001T020000Z"), ("S01", "20261113T020000Z"), ("S01", "20261127T020000Z"),
        ("S02", "20261002T020000Z"),
    ]
    assert found.transfers[0].path == tmp_path / "S01" / "20261001T020000Z"
    assert found.warnings == []


@pytest.mark.parametrize(("manifest", "has_manifest"), [(True, True), (False, False)])
def test_folder_without_manifest_is_found_as_pending(tmp_path: Path, manifest: bool,
                                                     has_manifest: bool) -> None:
    make_folder(tmp_path, "S01", "20261127T020000Z", manifest=manifest)
    [ref] = discover_transfers(tmp_path, SOURCES).transfers
    assert ref.has_manifest is has_manifest


def test_manifest_that_is_a_folder_does_not_make_a_transfer_complete(tmp_path: Path) -> None:
    path = make_folder(tmp_path, "S01", "20261127T020000Z", manifest=False)
    (path / MANIFEST).mkdir()
    assert TransferRef("S01", "20261127T020000Z", path).has_manifest is False


def test_folder_of_an_unregistered_source_is_reported_and_not_read(tmp_path: Path) -> None:
    make_folder(tmp_path, "S99", "20261127T020000Z")
    found = discover_transfers(tmp_path, SOURCES)
    assert found.transfers == []
    assert len(found.warnings) == 1
    assert found.warnings[0].startswith("S99: not a registered source")


def test_symlinked_source_folder_is_never_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    make_folder(outside, "S01", "20261127T020000Z")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "S01").symlink_to(outside / "S01", target_is_directory=True)
    found = discover_transfers(inbox, SOURCES)
    assert found.transfers == []
    assert found.warnings == ["S01: a symbolic link in the inbox is never followed"]


def test_symlinked_transfer_folder_is_never_followed(tmp_path: Path) -> None:
    real = make_folder(tmp_path / "elsewhere", "S01", "20261127T020000Z")
    (tmp_path / "inbox" / "S01").mkdir(parents=True)
    (tmp_path / "inbox" / "S01" / "20261128T020000Z").symlink_to(real, target_is_directory=True)
    found = discover_transfers(tmp_path / "inbox", SOURCES)
    assert found.transfers == []
    assert found.warnings == ["S01/20261128T020000Z: not a transfer folder; ignored"]


def test_stray_file_in_a_source_folder_is_reported_not_a_transfer(tmp_path: Path) -> None:
    make_folder(tmp_path, "S01", "20261127T020000Z")
    (tmp_path / "S01" / "notes.txt").write_text("hello", encoding="utf-8")
    found = discover_transfers(tmp_path, SOURCES)
    assert [t.folder for t in found.transfers] == ["20261127T020000Z"]
    assert found.warnings == ["S01/notes.txt: not a transfer folder; ignored"]


def test_hidden_entries_are_skipped_silently(tmp_path: Path) -> None:
    make_folder(tmp_path, "S01", ".20261127T020000Z.partial")
    make_folder(tmp_path, ".trash", "20261127T020000Z")
    found = discover_transfers(tmp_path, SOURCES)
    assert found.transfers == []
    assert found.warnings == []


def test_only_restricts_discovery_to_the_chosen_sources(tmp_path: Path) -> None:
    make_folder(tmp_path, "S01", "20261127T020000Z")
    make_folder(tmp_path, "S02", "20261127T020000Z")
    found = discover_transfers(tmp_path, SOURCES, only={"S02"})
    assert [t.source for t in found.transfers] == ["S02"]


def test_empty_inbox_has_no_transfers(tmp_path: Path) -> None:
    found = discover_transfers(tmp_path, SOURCES)
    assert (found.transfers, found.warnings) == ([], [])


def test_missing_inbox_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        discover_transfers(tmp_path / "no-such-inbox", SOURCES)


def test_stray_file_at_the_top_of_the_inbox_is_reported(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("notes")
    discovery = discover_transfers(tmp_path, load_registry())
    assert discovery.transfers == []
    assert discovery.warnings == ["readme.txt: a stray file at the top of the inbox; ignored"]
