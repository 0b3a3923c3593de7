"""flows/verify.py: a transfer's manifest against its folder (DTS §2.1)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from flows.discover import MANIFEST, TransferRef
from flows.verify import Rejected, VerifiedTransfer, text_encoding, verify_transfer
from tests.helpers import (
    DTS_CSV_FILES,
    TRANSFER_ID,
    dts_csv_files,
    manifest,
    manifest_entry,
    sha256_hex,
    source,
    write_transfer,
)


def verify(ref: TransferRef) -> VerifiedTransfer:
    return verify_transfer(ref, source(ref.source))


def rewrite_manifest(ref: TransferRef, change: dict[str, Any]) -> None:
    """Apply `change` to the manifest's first file entry (a value of None removes the key)."""
    document = json.loads((ref.path / MANIFEST).read_text(encoding="utf-8"))
    for key, value in change.items():
        if value is None:
            document["files"][0].pop(key)
        else:
            document["files"][0][key] = value
    (ref.path / MANIFEST).write_text(json.dumps(document), encoding="utf-8")


def with_bytes(source_id: str, name: str, old: bytes, new: bytes) -> dict[str, bytes]:
    """The five good files of a source, one of them edited at the byte level."""
    files = dts_csv_files(source(source_id))
    assert old in files[name]
    files[name] = files[name].replace(old, new)
    return files


# --- a good transfer --------------------------------------------------------------------------

@pytest.mark.parametrize("source_id", ["S01", "S02", "S05"])
def test_complete_transfer_verifies_with_every_listed_file(tmp_path: Path, source_id: str) -> None:
    ref = write_transfer(tmp_path, source_id)
    verified = verify(ref)
    assert verified.transfer_id == TRANSFER_ID
    assert verified.format == "dts-csv"
    assert verified.source == source(source_id)
    assert set(verified.files) == set(DTS_CSV_FILES)
    assert verified.files["vitals.csv"].path == ref.path / "vitals.csv"
    assert verified.files["vitals.csv"].rows == 1
    assert verified.manifest_sha256 == sha256_hex((ref.path / MANIFEST).read_bytes())
    assert verified.warnings == []


def test_upper_case_checksum_in_the_manifest_is_accepted(tmp_path: Path) -> None:
    ref = write_transfer(tmp_path, "S01")
    rewrite_manifest(ref, {"sha256": sha256_hex((ref.path / "participants.csv").read_bytes()).upper()})
    expected = sha256_hex((ref.path / "participants.csv").read_bytes())
    assert verify(ref).files["participants.csv"].sha256 == expected


def test_unlisted_files_are_ignored_with_a_warning(tmp_path: Path) -> None:
    files = dts_csv_files(source("S01")) | {"notes.txt": b"call me", "old_vitals.csv": b"x"}
    ref = write_transfer(tmp_path, "S01", files=files, listed=DTS_CSV_FILES)
    verified = verify(ref)
    assert set(verified.files) == set(DTS_CSV_FILES)
    assert verified.warnings == ["unlisted file notes.txt ignored", "unlisted file old_vitals.csv ignored"]


# --- the manifest itself ----------------------------------------------------------------------

@pytest.mark.parametrize("text", ["{not json", "", '{"study": "KAP-TRD-01",}', b"\xff\xfe{}"])
def test_manifest_that_is_not_valid_json_is_rejected(tmp_path: Path, text: str | bytes) -> None:
    ref = write_transfer(tmp_path, "S01", manifest_text=text)
    with pytest.raises(Rejected, match=r"not valid JSON"):
        verify(ref)


@pytest.mark.parametrize("text", ["[]", '"KAP-TRD-01"', "null", "42"])
def test_manifest_that_is_not_a_json_object_is_rejected(tmp_path: Path, text: str) -> None:
    ref = write_transfer(tmp_path, "S01", manifest_text=text)
    with pytest.raises(Rejected, match=r"not a JSON object"):
        verify(ref)


@pytest.mark.parametrize("study", ["KAP-TRD-02", "kap-trd-01", None])
def test_manifest_naming_another_study_is_rejected(tmp_path: Path, study: str | None) -> None:
    ref = write_transfer(tmp_path, "S01", manifest_changes={"study": study})
    with pytest.raises(Rejected, match=r"names study"):
        verify(ref)


@pytest.mark.parametrize("other", ["S02", "s01", None])
def test_manifest_naming_another_source_is_rejected(tmp_path: Path, other: str | None) -> None:
    ref = write_transfer(tmp_path, "S01", manifest_changes={"source": other})
    with pytest.raises(Rejected, match=r"names source .* in the folder of S01"):
        verify(ref)


@pytest.mark.parametrize("transfer_id", ["2026-11-27T02:00:00Z", "20261127T020000", "20261127t020000z",
                                         "20261127T0200Z", "x20261127T020000Z", 20261127020000,
                                         "20261399T256199Z",
                                         # digits of other scripts are no digits of a UTC time
                                         "\u0662\u0660\u0662\u0666\u0661\u0661\u0662\u0667T"
                                         "\u0660\u0662\u0660\u0660\u0660\u0660Z",
                                         "2026112\uff17T020000Z"])
def test_transfer_id_not_of_the_form_yyyymmddThhmmssZ_is_rejected(tmp_path: Path, transfer_id: Any) -> None:
    ref = write_transfer(tmp_path, "S01", folder=str(transfer_id),
                         manifest_changes={"transfer_id": transfer_id})
    with pytest.raises(Rejected, match=r"not a UTC time of the form YYYYMMDDTHHMMSSZ"):
        verify(ref)


def test_manifest_without_a_transfer_id_is_rejected(tmp_path: Path) -> None:
    ref = write_transfer(tmp_path, "S01", manifest_changes={"transfer_id": None})
    with pytest.raises(Rejected, match=r"transfer_id None"):
        verify(ref)


def test_folder_not_named_after_the_transfer_id_is_rejected(tmp_path: Path) -> None:
    ref = write_transfer(tmp_path, "S01", TRANSFER_ID, folder="20261128T020000Z")
    with pytest.raises(Rejected, match=r"folder 20261128T020000Z does not match .* 20261127T020000Z"):
        verify(ref)


@pytest.mark.parametrize("fmt", ["dts-xlsx", "redcap", "iwrs", "csv", None])
def test_manifest_format_other_than_the_registered_one_is_rejected(tmp_path: Path, fmt: str | None) -> None:
    ref = write_transfer(tmp_path, "S01", manifest_changes={"format": fmt})
    with pytest.raises(Rejected, match=r"is not the registered format dts-csv"):
        verify(ref)


# --- the listing --------------------------------------------------------------------------------

@pytest.mark.parametrize("files", [[], None, "participants.csv", {"name": "participants.csv"}])
def test_manifest_listing_no_files_is_rejected(tmp_path: Path, files: Any) -> None:
    ref = write_transfer(tmp_path, "S01")
    document = json.loads((ref.path / MANIFEST).read_text(encoding="utf-8"))
    if files is None:
        del document["files"]
    else:
        document["files"] = files
    (ref.path / MANIFEST).write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(Rejected, match=r"lists no files"):
        verify(ref)


@pytest.mark.parametrize("key", ["sha256", "rows"])
def test_manifest_entry_lacking_sha256_or_rows_is_rejected(tmp_path: Path, key: str) -> None:
    ref = write_transfer(tmp_path, "S01")
    rewrite_manifest(ref, {key: None})
    with pytest.raises(Rejected, match=rf"lacks its {key}"):
        verify(ref)


@pytest.mark.parametrize("sha", ["", "abc", "g" * 64, "a" * 63, 42])
def test_manifest_entry_whose_sha256_is_not_a_hex_digest_is_rejected(tmp_path: Path, sha: Any) -> None:
    ref = write_transfer(tmp_path, "S01")
    rewrite_manifest(ref, {"sha256": sha})
    with pytest.raises(Rejected, match=r"is not a SHA-256 hex digest"):
        verify(ref)


@pytest.mark.parametrize("rows", [-1, "1", 1.5, True, [1], {"participants": -1}])
def test_manifest_entry_whose_rows_is_not_a_row_count_is_rejected(tmp_path: Path, rows: Any) -> None:
    ref = write_transfer(tmp_path, "S01")
    rewrite_manifest(ref, {"rows": rows})
    with pytest.raises(Rejected, match=r"is not a row count"):
        verify(ref)


def test_manifest_entry_that_is_not_an_object_is_rejected(tmp_path: Path) -> None:
    ref = write_transfer(tmp_path, "S01")
    document = json.loads((ref.path / MANIFEST).read_text(encoding="utf-8"))
    document["files"].append("notes.txt")
    (ref.path / MANIFEST).write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(Rejected, match=r"is not an object"):
        verify(ref)


@pytest.mark.parametrize("name", ["sub/participants.csv", "../participants.csv", "..", ".", "",
                                  "/etc/passwd", "C:\\data\\participants.csv", "sub\\participants.csv",
                                  "participants.csv\x00", None, 7])
def test_listed_name_that_is_not_a_plain_file_name_is_rejected(tmp_path: Path, name: Any) -> None:
    ref = write_transfer(tmp_path, "S01")
    rewrite_manifest(ref, {"name": name})  # None: the entry has no name
    with pytest.raises(Rejected, match=r"not a plain file name inside the transfer folder"):
        verify(ref)


def test_listed_name_reaching_outside_the_folder_is_never_read(tmp_path: Path) -> None:
    secret = tmp_path / "S01" / "secret.csv"
    ref = write_transfer(tmp_path, "S01")
    secret.write_bytes(b"subject_id\nS01-0001\n")
    rewrite_manifest(ref, {"name": "../secret.csv", "sha256": sha256_hex(secret.read_bytes())})
    with pytest.raises(Rejected, match=r"not a plain file name"):
        verify(ref)


@pytest.mark.parametrize("target_inside", [True, False])
def test_listed_file_that_is_a_symbolic_link_is_rejected(tmp_path: Path, target_inside: bool) -> None:
    ref = write_transfer(tmp_path, "S01")
    link = ref.path / "participants.csv"
    target = (ref.path if target_inside else tmp_path) / "participants_copy.csv"
    target.write_bytes(link.read_bytes())
    link.unlink()
    link.symlink_to(target)
    with pytest.raises(Rejected, match=r"participants.csv is not a plain file"):
        verify(ref)


def test_a_manifest_that_is_a_symbolic_link_is_rejected_not_followed(tmp_path: Path) -> None:
    ref = write_transfer(tmp_path / "inbox", "S01")
    outside = tmp_path / "outside.json"
    outside.write_bytes((ref.path / "manifest.json").read_bytes())
    (ref.path / "manifest.json").unlink()
    (ref.path / "manifest.json").symlink_to(outside)
    assert ref.has_manifest  # not pending: there, and refused
    with pytest.raises(Rejected, match=r"manifest.json is a symbolic link"):
        verify(ref)


def test_listed_name_that_is_a_folder_is_rejected(tmp_path: Path) -> None:
    ref = write_transfer(tmp_path, "S01")
    (ref.path / "participants.csv").unlink()
    (ref.path / "participants.csv").mkdir()
    with pytest.raises(Rejected, match=r"participants.csv is not a plain file"):
        verify(ref)


def test_listed_file_missing_from_the_folder_is_rejected(tmp_path: Path) -> None:
    ref = write_transfer(tmp_path, "S01")
    (ref.path / "vitals.csv").unlink()
    with pytest.raises(Rejected, match=r"vitals.csv is listed in the manifest but missing"):
        verify(ref)


def test_file_listed_twice_is_rejected(tmp_path: Path) -> None:
    ref = write_transfer(tmp_path, "S01")
    document = json.loads((ref.path / MANIFEST).read_text(encoding="utf-8"))
    document["files"].append(document["files"][0])
    (ref.path / MANIFEST).write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(Rejected, match=r"twice"):
        verify(ref)


@pytest.mark.parametrize("required", DTS_CSV_FILES)
def test_required_file_missing_and_unlisted_is_rejected(tmp_path: Path, required: str) -> None:
    files = {n: d for n, d in dts_csv_files(source("S01")).items() if n != required}
    ref = write_transfer(tmp_path, "S01", files=files)
    with pytest.raises(Rejected, match=rf"required file {required} is missing"):
        verify(ref)


@pytest.mark.parametrize("required", DTS_CSV_FILES)
def test_required_file_present_but_unlisted_is_rejected(tmp_path: Path, required: str) -> None:
    ref = write_transfer(tmp_path, "S01", listed=[n for n in DTS_CSV_FILES if n != required])
    with pytest.raises(Rejected, match=rf"required file {required} is present but not listed"):
        verify(ref)


# --- the files' bytes ---------------------------------------------------------------------------

def test_file_whose_checksum_differs_from_the_manifest_is_rejected(tmp_path: Path) -> None:
    ref = write_transfer(tmp_path, "S01")
    path = ref.path / "vitals.csv"
    path.write_bytes(path.read_bytes().replace(b"120", b"121"))
    with pytest.raises(Rejected, match=r"vitals.csv: checksum differs from the manifest"):
        verify(ref)


def test_checksum_of_another_file_is_rejected(tmp_path: Path) -> None:
    files = dts_csv_files(source("S01"))
    entries = [manifest_entry(n, files[n]) for n in files]
    entries[0]["sha256"], entries[1]["sha256"] = entries[1]["sha256"], entries[0]["sha256"]
    text = json.dumps(manifest("S01", TRANSFER_ID, entries))
    ref = write_transfer(tmp_path, "S01", files=files, manifest_text=text)
    with pytest.raises(Rejected, match=r"checksum differs"):
        verify(ref)


@pytest.mark.parametrize(
    ("source_id", "bad"),
    [
        ("S02", b"Head\x81ache"),  # 0x81 has no character in Windows-1252
        ("S02", b"Head\x8dache"),
        ("S01", b"Head\xffache"),  # never valid in UTF-8
        ("S01", b"Head\xc3ache"),  # a lead byte without its continuation
        ("S01", b"Head\xed\xa0\x80ache"),  # an encoded surrogate
        ("S05", b"Head\xe9ache"),  # Latin-1 text at a UTF-8 site
    ],
)
def test_file_not_decodable_in_the_declared_encoding_is_rejected(tmp_path: Path, source_id: str,
                                                                  bad: bytes) -> None:
    files = with_bytes(source_id, "adverse_events.csv", b"Headache", bad)
    ref = write_transfer(tmp_path, source_id, files=files)
    with pytest.raises(Rejected, match=r"adverse_events.csv cannot be decoded as .*byte offset \d+"):
        verify(ref)


def test_file_truncated_inside_a_utf8_character_is_rejected(tmp_path: Path) -> None:
    files = dts_csv_files(source("S01"))
    files["adverse_events.csv"] += b"\xe2\x82"  # the first two bytes of "€"
    ref = write_transfer(tmp_path, "S01", files=files)
    with pytest.raises(Rejected, match=r"adverse_events.csv cannot be decoded as utf-8-sig: truncated"):
        verify(ref)


def test_windows_1252_text_at_a_windows_1252_site_is_accepted(tmp_path: Path) -> None:
    text = "Kopfweh Zürich 5€ – “x”".encode("cp1252")
    files = with_bytes("S02", "adverse_events.csv", b"Headache", text)
    assert set(verify(write_transfer(tmp_path, "S02", files=files)).files) == set(DTS_CSV_FILES)


def test_windows_1252_text_at_a_utf8_site_is_rejected(tmp_path: Path) -> None:
    files = with_bytes("S01", "adverse_events.csv", b"Headache", "Zürich".encode("cp1252"))
    with pytest.raises(Rejected, match=r"cannot be decoded as utf-8"):
        verify(write_transfer(tmp_path, "S01", files=files))


@pytest.mark.parametrize("source_id", ["S01", "S05"])
@pytest.mark.parametrize("bom", [True, False])
def test_utf8_byte_order_mark_at_a_utf8_site_is_accepted(tmp_path: Path, source_id: str, bom: bool) -> None:
    files = {n: b"\xef\xbb\xbf" + d.removeprefix(b"\xef\xbb\xbf") if bom else d.removeprefix(b"\xef\xbb\xbf")
             for n, d in dts_csv_files(source(source_id)).items()}
    files["adverse_events.csv"] = files["adverse_events.csv"].replace(b"Headache", "Kopfweh €".encode())
    assert verify(write_transfer(tmp_path, source_id, files=files)).warnings == []


@pytest.mark.parametrize(("source_id", "codec"),
                         [("S01", "utf-8-sig"), ("S02", "cp1252"), ("S05", "utf-8-sig")])
def test_csv_files_are_decoded_in_the_sites_encoding(source_id: str, codec: str) -> None:
    assert text_encoding(source(source_id), "participants.csv") == codec


def test_only_csv_files_are_decoded() -> None:
    assert text_encoding(source("S01"), "export.xlsx") is None
    assert text_encoding(source("S06"), "export.xlsx") is None
