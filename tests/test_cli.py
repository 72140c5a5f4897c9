"""``fastload convert / inspect / verify`` as a user runs them."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastload.cli import build_parser, main
from fastload.formats import open_dataset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def converted(photo_folder, tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("cli") / "ds"
    assert main(["convert", str(photo_folder), str(dst), "--shard-size", "300KB", "--workers", "2", "-q"]) == 0
    return dst


def test_convert_prints_summary(photo_folder, tmp_path, capsys):
    assert main(["convert", str(photo_folder), str(tmp_path / "ds"), "--backend", "lmdb", "--max-side", "64",
                 "-q"]) == 0
    out = capsys.readouterr().out
    assert "40 records" in out and "records/s" in out and "0 skipped" in out and "(lmdb)" in out
    assert open_dataset(tmp_path / "ds").image_size(0, "image") == (64, 48)


def test_inspect(converted, capsys):
    assert main(["inspect", str(converted)]) == 0
    out = capsys.readouterr().out
    assert "records   40 in" in out and "JPEG 500x375" in out and "distinct=10" in out
    assert main(["inspect", str(converted), "--json", "--record", "7"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["records"] == 40 and info["backend"] == "shards" and info["sample"]["index"] == 7
    assert [f["name"] for f in info["fields"]] == ["image", "label"]
    assert info["fields"][0]["min_size"] == [500, 375] and sum(s["records"] for s in info["shards"]) == 40


def test_verify_ok(converted, capsys):
    assert main(["verify", str(converted), "-q"]) == 0
    assert "OK: 40 records" in capsys.readouterr().out


@pytest.mark.parametrize("backend", ["shards", "lmdb"])
def test_verify_names_shard_and_record_of_a_flipped_byte(photo_folder, tmp_path, capsys, backend):
    dst = tmp_path / "ds"
    assert main(["convert", str(photo_folder), str(dst), "--backend", backend, "--shard-size", "300KB",
                 "--workers", "0", "-q"]) == 0
    r = open_dataset(dst)
    shard, rec = r.locate(25)
    image = bytes(r.get(25, "image"))
    r.close()
    raw = bytearray(shard.read_bytes())
    pos = raw.find(image)
    assert pos > 0
    raw[pos + len(image) // 2] ^= 0x01
    shard.write_bytes(bytes(raw))
    capsys.readouterr()
    assert main(["verify", str(dst), "-q"]) == 1
    out = capsys.readouterr().out
    assert f"{shard}: record {rec} (global index 25): checksum mismatch" in out
    assert f"{shard}: sha256 differs from the manifest" in out and "FAILED" in out


def test_errors_exit_nonzero(photo_folder, converted, tmp_path, capsys):
    assert main(["convert", str(photo_folder), str(converted), "-q"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["verify", str(tmp_path / "missing"), "-q"]) == 1
    assert main(["inspect", str(tmp_path / "missing")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "no-such-dir"), str(tmp_path / "x"), "-q"]) == 1
    with pytest.raises(SystemExit) as e:
        main(["convert", str(photo_folder), str(tmp_path / "y"), "--shard-size", "lots"])
    assert e.value.code == 2


def test_parser_is_extensible():
    from fastload import cli
    calls = []

    def add_hello(sub):
        p = sub.add_parser("hello")
        p.set_defaults(func=lambda args: calls.append(args.command) or 0)

    cli.SUBCOMMANDS.append(add_hello)
    try:
        assert main(["hello"]) == 0 and calls == ["hello"]
    finally:
        cli.SUBCOMMANDS.remove(add_hello)
    assert "hello" not in build_parser().format_help()


def test_real_process_exit_codes(converted, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    ok = subprocess.run([sys.executable, "-m", "fastload.cli", "verify", str(converted), "-q"], env=env,
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run([sys.executable, "-m", "fastload.cli", "verify", str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "no manifest" in bad.stdout
