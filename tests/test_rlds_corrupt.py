"""Damaged committed files: validation names the record and offset; the reader raises."""

from __future__ import annotations

import json
import struct

import pytest

from rlds import tfrecord
from rlds.errors import EpisodeError
from rlds.reader import open_episode
from rlds.validate import validate_episode
from tests.rlds_helpers import write_episode

N = 8


@pytest.fixture
def episode(tmp_path):
    _, info = write_episode(tmp_path, N, seed=5)
    path = info.path / "steps.tfrecord"
    with open(path, "rb") as f:
        records = [r for r in tfrecord.scan(f)]
    assert len(records) == N
    return info.path, path, records


def _read_all(ep_path):
    return list(open_episode(ep_path).steps())


def test_intact_episode_validates(episode):
    ep_path, _, _ = episode
    report = validate_episode(ep_path)
    assert report.ok, report.render()
    assert report.num_steps == N and report.images_checked == 2 * N
    assert "OK" in report.render()


def test_flipped_bit_in_the_middle(episode):
    ep_path, path, records = episode
    r = records[4]
    blob = bytearray(path.read_bytes())
    blob[r.offset + 12 + len(r.data) // 2] ^= 0x10  # inside record 4's data
    path.write_bytes(bytes(blob))

    report = validate_episode(ep_path)
    assert not report.ok
    text = report.render()
    assert f"record 4 at byte offset {r.offset}: bad data CRC" in text
    assert "sha256" in text  # the whole-file checksum disagrees too
    assert report.num_steps == 4
    with pytest.raises(EpisodeError) as e:
        _read_all(ep_path)
    msg = str(e.value)
    assert (
        str(path) in msg and f"record 4 at byte offset {r.offset}" in msg and "bad data CRC" in msg
    )


def test_flipped_bit_in_a_length_field(episode):
    ep_path, path, records = episode
    r = records[2]
    blob = bytearray(path.read_bytes())
    blob[r.offset + 2] ^= 0x01
    path.write_bytes(bytes(blob))
    assert (
        f"record 2 at byte offset {r.offset}: bad length CRC" in validate_episode(ep_path).render()
    )
    with pytest.raises(EpisodeError, match=f"record 2 at byte offset {r.offset}: bad length CRC"):
        _read_all(ep_path)


def test_truncated_tail(episode):
    ep_path, path, records = episode
    blob = path.read_bytes()
    path.write_bytes(blob[: records[-1].offset + 30])
    report = validate_episode(ep_path)
    assert not report.ok
    last = records[-1]
    assert f"record {N - 1} at byte offset {last.offset}: truncated record" in report.render()
    assert any("metadata says 8" in p for p in report.problems)
    with pytest.raises(EpisodeError, match=f"record {N - 1} at byte offset {last.offset}: trunc"):
        _read_all(ep_path)


def test_truncated_at_a_record_boundary(episode):
    ep_path, path, records = episode
    path.write_bytes(path.read_bytes()[: records[-1].offset])
    report = validate_episode(ep_path)
    assert not report.ok
    assert any("7 valid records, metadata says 8" in p for p in report.problems)
    assert any("is not is_last" in p for p in report.problems)
    with pytest.raises(EpisodeError, match="file ends after 7 records but num_steps is 8"):
        _read_all(ep_path)


def test_garbage_appended(episode):
    ep_path, path, records = episode
    end = records[-1].end
    with open(path, "ab") as f:
        f.write(b"\xde\xad\xbe\xef" * 10)
    report = validate_episode(ep_path)
    assert not report.ok
    assert f"record {N} at byte offset {end}: bad length CRC" in report.render()
    assert any("metadata says" in p and "size" in p for p in report.problems)
    with pytest.raises(EpisodeError, match=f"record {N} at byte offset {end}"):
        _read_all(ep_path)


def test_a_valid_record_appended(episode):
    ep_path, path, records = episode
    with open(path, "ab") as f:
        f.write(tfrecord.encode_record(records[0].data))
    with pytest.raises(EpisodeError, match=f"record {N} .*beyond num_steps"):
        _read_all(ep_path)
    report = validate_episode(ep_path)
    assert any("is_first=True on step 8" in p for p in report.problems)
    assert any("follows a step marked is_last" in p for p in report.problems)


def _rewrite_record(path, records, i, new_data):
    out = bytearray()
    for r in records:
        out += tfrecord.encode_record(new_data if r.index == i else r.data)
    path.write_bytes(bytes(out))


def test_bad_header_json_with_valid_crcs(episode):
    ep_path, path, records = episode
    data = bytearray(records[3].data)
    data[4] = ord("#")  # the JSON header's opening brace: now invalid JSON, CRC recomputed
    _rewrite_record(path, records, 3, bytes(data))
    report = validate_episode(ep_path)
    assert f"record 3 at byte offset {records[3].offset}: bad header JSON" in report.render()
    with pytest.raises(EpisodeError, match=f"record 3 at byte offset {records[3].offset}: bad h"):
        _read_all(ep_path)


def test_header_with_wrong_field_and_broken_image(episode):
    ep_path, path, records = episode
    (hlen,) = struct.unpack_from("<I", records[2].data, 0)
    header = json.loads(records[2].data[4 : 4 + hlen])
    header["index"] = 17
    header["is_last"] = "yes"
    head = json.dumps(header).encode()
    _rewrite_record(
        path, records, 2, struct.pack("<I", len(head)) + head + records[2].data[4 + hlen :]
    )
    report = validate_episode(ep_path)
    assert any("record 2" in p and "'is_last' has type str" in p for p in report.problems)

    # a JPEG whose bytes are mangled (CRCs recomputed): the image does not decode
    (hlen,) = struct.unpack_from("<I", records[5].data, 0)
    header = json.loads(records[5].data[4 : 4 + hlen])
    img = next(b for b in header["blobs"] if b["name"] == "image")
    data = bytearray(records[5].data)
    start = 4 + hlen + img["offset"]
    data[start : start + img["length"]] = b"\x00" * img["length"]
    with open(path, "rb") as f:
        records = [r for r in tfrecord.scan(f) if isinstance(r, tfrecord.Record)]
    _rewrite_record(path, records, 5, bytes(data))
    report = validate_episode(ep_path)
    assert any("record 5" in p and "JPEG does not decode" in p for p in report.problems)
    with pytest.raises(EpisodeError, match="record 2 at byte offset"):
        _read_all(ep_path)


def test_bad_metadata(episode):
    ep_path, _, _ = episode
    meta_path = ep_path / "episode.json"
    meta = json.loads(meta_path.read_text())
    del meta["num_steps"]
    meta_path.write_text(json.dumps(meta))
    report = validate_episode(ep_path)
    assert any("missing key 'num_steps'" in p for p in report.problems)
    with pytest.raises(EpisodeError, match="missing key 'num_steps'"):
        open_episode(ep_path)
    meta_path.write_text("{not json")
    assert any("unreadable" in p for p in validate_episode(ep_path).problems)
    with pytest.raises(EpisodeError, match="unreadable metadata"):
        open_episode(ep_path)


def test_validate_never_raises(tmp_path, episode):
    ep_path, path, _ = episode
    assert not validate_episode(tmp_path / "nope").ok
    (ep_path / "steps.tfrecord").unlink()
    report = validate_episode(ep_path)
    assert not report.ok and any("cannot open" in p for p in report.problems)
    path.write_bytes(b"")
    report = validate_episode(ep_path)
    assert any("no valid steps" in p for p in report.problems)
