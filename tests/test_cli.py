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


# -- the command as a user runs it: a real process, real pipes ------------------------------------------
def _fastload(*args: str, cwd: Path | None = None, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    kw.setdefault("capture_output", "stdout" not in kw and "stderr" not in kw)
    return subprocess.run([sys.executable, "-m", "fastload.cli", *args], env=env, cwd=cwd, text=True,
                          timeout=300, **kw)


def _options(parser):
    """(command, option strings, help) of every argument of the parser and of each subcommand."""
    import argparse
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from ((f"{name} {where}".strip(), opts, h) for where, opts, h in _options(sub))
        else:
            yield "", action.option_strings or [action.dest], action.help


def test_every_subcommand_and_option_has_help():
    import argparse
    parser = build_parser()
    missing = [f"fastload {cmd} {'/'.join(opts)}" for cmd, opts, h in _options(parser)
               if not h or h == argparse.SUPPRESS]
    assert not missing, f"options without help text: {missing}"
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    listed = {c.dest for c in sub._choices_actions if c.help}
    assert listed == set(sub.choices), f"subcommands without help: {set(sub.choices) - listed}"
    assert all(p.description for p in sub.choices.values()), "every subcommand's --help says what it does"


def test_version_is_written_once():
    import fastload
    r = _fastload("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"fastload {fastload.__version__}", r
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject and "\nversion =" not in pyproject.split("[tool.setuptools")[0]


def test_closed_pipe_ends_quietly(converted):
    """``fastload inspect DST | head`` after head has gone: no traceback, no 'Broken pipe', status 141."""
    read_end, write_end = os.pipe()
    os.close(read_end)            # the reader is gone before the first write
    try:
        r = _fastload("inspect", str(converted), stdout=write_end, stderr=subprocess.PIPE)
    finally:
        os.close(write_end)
    assert r.returncode == 141 and r.stderr == "", r.stderr


def test_progress_to_a_log_is_lines_not_a_bar(photo_folder, tmp_path):
    log = tmp_path / "log.txt"
    with open(log, "w") as f:
        r = _fastload("convert", str(photo_folder), str(tmp_path / "ds"), "--workers", "0", stderr=f,
                      stdout=subprocess.PIPE)
    assert r.returncode == 0
    text = log.read_text()
    assert "\r" not in text
    assert "convert -> ds: 40/40 rec (100%)" in text and "wrote " in r.stdout, text


def test_progress_on_a_terminal_is_a_live_bar(photo_folder, tmp_path):
    import fcntl
    import pty
    import struct
    import termios
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))   # a new pty is 0 wide
    try:
        r = _fastload("convert", str(photo_folder), str(tmp_path / "ds"), "--workers", "0", stderr=follower,
                      stdout=subprocess.PIPE)
        assert r.returncode == 0
        os.set_blocking(leader, False)
        text = b""
        try:
            while chunk := os.read(leader, 65536):
                text += chunk
        except (BlockingIOError, OSError):
            pass
    finally:
        os.close(leader)
        os.close(follower)
    assert b"\r" in text and b"40/40" in text, text[-500:]


def test_inspect_says_how_images_were_stored(photo_folder, converted, tmp_path):
    r = _fastload("inspect", str(converted))
    image_line = next(line for line in r.stdout.splitlines() if line.strip().startswith("image "))
    assert "stored as found (byte for byte)" in image_line and "quality" not in image_line
    assert "by area smallest 500x375, largest 500x375" in image_line
    assert _fastload("convert", str(photo_folder), str(tmp_path / "q"), "--quality", "75", "-q").returncode == 0
    r = _fastload("inspect", str(tmp_path / "q"))
    assert "re-encoded as JPEG, quality=75" in r.stdout, r.stdout
    r = _fastload("inspect", str(converted), "--json")
    assert json.loads(r.stdout)["fields"][0]["stored"] == "stored as found (byte for byte)"


def test_errors_point_to_what_to_do(photo_folder, converted):
    r = _fastload("inspect", str(photo_folder))
    assert r.returncode == 1 and "not a fastload dataset" in r.stderr
    assert f"fastload convert {photo_folder} DST" in r.stderr, r.stderr
    shard = sorted(converted.glob("*.fls"))[0]
    r = _fastload("verify", str(shard))
    assert r.returncode == 1 and "is a file" in r.stdout and f"the dataset is its folder {converted}" in r.stdout
    r = _fastload("inspect", str(shard))
    assert r.returncode == 1 and "does not exist" not in r.stderr and f"its folder {converted}" in r.stderr


def test_unreadable_image_names_the_bytes_not_a_python_object(photo_folder, converted, tmp_path):
    import shutil
    from fastload import ShardDataset, ops
    from fastload.errors import CorruptRecordError
    src = tmp_path / "src"
    shutil.copytree(photo_folder, src)
    (src / "cat" / "not-really.jpg").write_bytes(b"this is not a JPEG")
    r = _fastload("convert", str(src), str(tmp_path / "ds"), "-q")
    assert r.returncode == 1 and "not-really.jpg" in r.stderr and "18 bytes" in r.stderr, r.stderr
    assert "BytesIO" not in r.stderr and "0x" not in r.stderr, r.stderr
    # a record whose bytes went bad after conversion, as the loader reports it
    dst = tmp_path / "copy"
    shutil.copytree(converted, dst)
    r_ = open_dataset(dst)
    shard, _ = r_.locate(3)
    image = bytes(r_.get(3, "image"))
    r_.close()
    raw = shard.read_bytes()
    shard.write_bytes(raw.replace(image, b"garbage!" * (len(image) // 8) + b"?" * (len(image) % 8)))
    ds = ShardDataset(dst, transforms={"image": [ops.DecodeCenterCrop(64, resize=72)]})
    with pytest.raises(CorruptRecordError) as e:
        ds[3]
    assert "not a known image format" in str(e.value) and "BytesIO" not in str(e.value), str(e.value)


def test_demo_leaves_the_checkout_clean(tmp_path):
    """The README's first command in a fresh checkout: afterwards ``git status`` shows nothing new."""
    import shutil
    checkout = tmp_path / "checkout"
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        if (REPO / name).is_file():
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, checkout / name)
    git = ["git", "-c", "user.email=t@example.invalid", "-c", "user.name=t"]
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "scratch"]):
        subprocess.run(git + cmd, cwd=checkout, check=True, capture_output=True)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "PYTHONPATH": str(checkout), "TMPDIR": str(tmp)}
    r = subprocess.run([sys.executable, "-m", "fastload.cli", "demo", "--images", "40", "--batch-size", "8",
                        "--epochs", "1", "--workers", "1"], cwd=checkout, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "fastload / torch:" in r.stdout
    where = next(line for line in r.stdout.splitlines() if line.startswith("working in "))[len("working in "):]
    assert Path(where).parent == tmp and f"removed {where}" in r.stdout and not Path(where).exists()
    status = subprocess.run(["git", "status", "--porcelain", "--ignored=no"], cwd=checkout, capture_output=True,
                            text=True, check=True).stdout
    assert status == "", status


def test_demo_out_is_kept_and_reused(tmp_path):
    out = tmp_path / "demo"
    args = ("demo", "--out", str(out), "--images", "20", "--batch-size", "4", "--epochs", "1", "--workers", "1")
    r = _fastload(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"are in {out}" in r.stdout and (out / "shards" / "manifest.json").is_file()
    assert len(list((out / "photos").rglob("*.jpg"))) == 20
    r = _fastload("demo", "--images", "20", "--batch-size", "64")
    assert r.returncode == 1 and "--batch-size 64 is more than the 20 images" in r.stderr


def test_log_progress_prints_a_line_per_interval_and_one_at_the_end():
    import io
    from fastload.progress import LogProgress, progress_bar
    out = io.StringIO()
    assert isinstance(progress_bar(10, "x", file=out), LogProgress)     # a StringIO is no terminal
    bar = LogProgress(3_000_000, "verify", unit="B", unit_scale=True, file=out, interval=0)
    bar.update(1_000_000)
    bar.set_postfix_str("1 skipped")
    bar.update(2_000_000)
    bar.close()
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and "\r" not in out.getvalue()
    assert lines[0].startswith("verify: 1.0 MB of 3.0 MB (33%), ")
    assert lines[-1].startswith("verify: 3.0 MB of 3.0 MB (100%), ") and lines[-1].endswith(", 1 skipped")
    quiet = LogProgress(10, "convert", unit="rec", file=out, interval=3600)
    quiet.update(5)
    quiet.close()
    assert out.getvalue().splitlines()[3:] == [out.getvalue().splitlines()[-1]]
    assert out.getvalue().splitlines()[-1].startswith("convert: 5/10 rec (50%)")
