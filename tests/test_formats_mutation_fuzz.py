"""Property-based mutation fuzz over real converted dataset directories, both backends (issue 11).

Each case copies a small real dataset, applies one to three mutations drawn by hypothesis (manifest fields,
file types, sizes, links, truncations, byte flips, whole-page damage; with or without the manifest patched to
vouch for the damage), then opens and reads it as a loader does, runs ``verify`` and ``verify --decode``, and
asserts:

* only fastload errors are raised (anything else is a bug: KeyError, struct.error, MemoryError, ...);
* bounded memory: the cases run in a forked child under an address-space limit (RLIMIT_AS);
* no hang and no crash: the parent kills a case that makes no progress for ``CASE_TIMEOUT`` seconds, and a
  child killed by a signal (SIGBUS, SIGSEGV) fails the test, naming the case;
* verify agrees with the loader: when verify says OK, every record loads; every record the loader refuses
  as corrupt, ``verify --decode`` lists.

Cases run in batches of ``BATCH`` per child (a thousand per backend in CI by default;
``FASTLOAD_FUZZ_EXAMPLES=20000`` for a longer hunt, ``FASTLOAD_FUZZ_SEED`` to replay: batch k uses seed + k).
"""
from __future__ import annotations

import faulthandler
import io
import json
import multiprocessing
import os
import random
import resource
import shutil
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from PIL import Image

from dataset_damage import photo_jpegs, vouch_for, write_dataset

EXAMPLES = int(os.environ.get("FASTLOAD_FUZZ_EXAMPLES", "1000"))
SEED = int(os.environ.get("FASTLOAD_FUZZ_SEED", str(random.SystemRandom().randrange(1 << 30))))
CASE_TIMEOUT = 30.0
BATCH = 250               # cases per child: a process keeps each LMDB environment it opened mapped
MEMORY = 1 << 30          # address space a case may add to what the child starts with
PAGE = 4096

# -- what can happen to a dataset ---------------------------------------------------------------------------
_values = st.one_of(st.integers(-2, 3), st.integers(-(2**70), 2**70), st.sampled_from([0, 1, 2**31, 2**63, 10**15]),
                    st.none(), st.booleans(), st.floats(allow_nan=True), st.text(max_size=12),
                    st.sampled_from(["shards", "lmdb", "../x", "/etc/passwd", "manifest.json", "a" * 300]),
                    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))
_manifest_keys = ["format", "format_version", "backend", "num_records", "num_bytes", "num_shards", "schema",
                  "shards", "skipped", "info"]
_shard_keys = ["file", "num_records", "num_bytes", "sha256"]
_schema_keys = ["name", "type", "quality", "dtype", "shape"]

mutation = st.one_of(
    st.tuples(st.just("manifest_field"), st.sampled_from(_manifest_keys), _values, st.booleans()),
    st.tuples(st.just("shard_field"), st.integers(0, 4), st.sampled_from(_shard_keys), _values, st.booleans()),
    st.tuples(st.just("schema_field"), st.integers(0, 2), st.sampled_from(_schema_keys), _values),
    st.tuples(st.just("count_shift"), st.integers(0, 4), st.integers(-20, 20), st.booleans()),
    st.tuples(st.just("file_type"), st.integers(0, 5),
              st.sampled_from(["fifo", "dev_zero", "etc_passwd", "directory", "empty", "missing", "dangling",
                               "loop", "link_sibling", "link_outside", "link_inside"])),
    st.tuples(st.just("truncate"), st.integers(0, 5), st.floats(0, 1), st.booleans()),
    st.tuples(st.just("extend"), st.integers(0, 5), st.integers(1, 3 * PAGE), st.booleans(), st.booleans()),
    st.tuples(st.just("flip"), st.integers(0, 5), st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)),
                                                           min_size=1, max_size=8), st.booleans()),
    st.tuples(st.just("page"), st.integers(0, 5), st.integers(0, 1 << 20), st.sampled_from(["zeros", "ones", "random",
                                                                                          "copy"]), st.booleans()),
)


def _read_json(p: Path):
    """The manifest as JSON, or None (never opens a FIFO or a device: the harness must not hang either)."""
    if not p.is_file() or p.stat().st_size > 1 << 20:
        return None
    try:
        return json.loads(p.read_text())
    except Exception:        # noqa: BLE001
        return None


# damage to one record's image inside a data file, the manifest patched to vouch for it: what reaches decode
record_damage = st.tuples(st.just("record"), st.integers(0, 5), st.integers(0, 11),
                          st.sampled_from(["header", "cut", "flip", "size"]), st.integers(0, 1 << 16))
cases = st.one_of(st.lists(mutation, min_size=1, max_size=3), st.lists(record_damage, min_size=1, max_size=2))


def _damage_record(p: Path, k: int, how: str, r: int) -> None:
    """Damage the ``k``-th JPEG (SOI ... EOI) in data file ``p`` in place."""
    data = bytearray(p.read_bytes())
    starts = [i for i in range(len(data) - 3) if data[i:i + 3] == b"\xff\xd8\xff"]
    if not starts:
        return
    at = starts[k % len(starts)]
    end = data.find(b"\xff\xd9", at)
    end = len(data) if end < 0 else end
    if how == "header":
        data[at:at + 4] = b"\0\0\0\0"
    elif how == "cut":          # the second half of the scan gone (zeros), EOI kept
        mid = (at + end) // 2
        data[mid:end] = bytes(end - mid)
    elif how == "flip":
        data[at + 2 + r % max(end - at - 2, 1)] ^= 0x55
    elif how == "size":         # the frame header's height and width
        sof = data.find(b"\xff\xc0", at, end)
        if sof > 0:
            data[sof + 5:sof + 9] = (r % 65536).to_bytes(2, "big") + (65535 - r % 65536).to_bytes(2, "big")
    p.write_bytes(bytes(data))


def _files(ds: Path) -> list[Path]:
    """manifest.json first, then the data files in manifest order."""
    names = ["manifest.json"]
    try:
        names += [str(s["file"]) for s in _read_json(ds / "manifest.json")["shards"]]
    except Exception:        # noqa: BLE001 - an earlier mutation broke the manifest: use what is there
        names += sorted(p.name for p in ds.iterdir() if p.name != "manifest.json")
    return [ds / n for n in names if n and "/" not in n and n not in (".", "..")]


def _pick(ds: Path, k: int) -> Path:
    files = _files(ds)
    return files[k % len(files)]


def _edit_manifest(ds: Path, fn) -> None:
    p = ds / "manifest.json"
    obj = _read_json(p)
    if not isinstance(obj, dict):
        return
    fn(obj)
    if os.path.lexists(p):
        os.unlink(p)
    p.write_text(json.dumps(obj))


def _fix_totals(obj: dict) -> None:
    try:
        obj["num_records"] = sum(s["num_records"] for s in obj["shards"])
        obj["num_bytes"] = sum(s["num_bytes"] for s in obj["shards"])
    except Exception:        # noqa: BLE001
        pass


def _replace_with(p: Path, kind: str, ds: Path, outside: Path) -> None:
    original = p.read_bytes() if p.is_file() and p.stat().st_size < 1 << 24 else b""
    if os.path.lexists(p):
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else os.unlink(p)
    if kind == "fifo":
        os.mkfifo(p)
    elif kind == "dev_zero":
        os.symlink("/dev/zero", p)
    elif kind == "etc_passwd":
        os.symlink("/etc/passwd", p)
    elif kind == "directory":
        p.mkdir()
    elif kind == "empty":
        p.write_bytes(b"")
    elif kind == "dangling":
        os.symlink(ds / "no-such-file", p)
    elif kind == "loop":
        os.symlink(p.name, p)
    elif kind == "link_sibling":
        others = [f for f in _files(ds) if f != p and f.is_file()]
        os.symlink(others[0].name if others else "manifest.json", p)
    elif kind == "link_outside":
        target = outside / p.name
        target.write_bytes(original)
        os.symlink(target, p)
    elif kind == "link_inside":
        (ds / "sub").mkdir(exist_ok=True)
        (ds / "sub" / p.name).write_bytes(original)
        os.symlink(Path("sub") / p.name, p)


def apply(ds: Path, m: tuple, outside: Path) -> None:
    kind = m[0]
    if kind == "manifest_field":
        _, key, value, fix = m
        _edit_manifest(ds, lambda o: (o.__setitem__(key, value), fix and _fix_totals(o)))
    elif kind == "shard_field":
        _, k, key, value, fix = m

        def edit(o):
            shards = o.get("shards")
            if isinstance(shards, list) and shards and isinstance(shards[k % len(shards)], dict):
                shards[k % len(shards)][key] = value
                if fix:
                    _fix_totals(o)
        _edit_manifest(ds, edit)
    elif kind == "schema_field":
        _, k, key, value = m

        def edit(o):
            schema = o.get("schema")
            if isinstance(schema, list) and schema and isinstance(schema[k % len(schema)], dict):
                schema[k % len(schema)][key] = value
        _edit_manifest(ds, edit)
    elif kind == "count_shift":
        _, k, delta, fix = m

        def edit(o):
            shards = o.get("shards")
            if isinstance(shards, list) and shards and isinstance(shards[k % len(shards)], dict):
                s = shards[k % len(shards)]
                if isinstance(s.get("num_records"), int):
                    s["num_records"] = max(0, s["num_records"] + delta)
                if fix:
                    _fix_totals(o)
        _edit_manifest(ds, edit)
    elif kind == "record":
        _, k, n, how, r = m
        p = _pick(ds, k)
        if p.name != "manifest.json" and p.is_file() and not p.is_symlink():
            _damage_record(p, n, how, r)
            vouch_for(ds, [p.name])
    elif kind == "file_type":
        _, k, what = m
        _replace_with(_pick(ds, k), what, ds, outside)
    else:
        _, k, *args = m
        p = _pick(ds, k)
        if not p.is_file() or p.is_symlink() or p.stat().st_size > 1 << 24:
            return
        data = bytearray(p.read_bytes())
        vouch = args[-1]
        if kind == "truncate":
            data = data[:int(args[0] * len(data))]
        elif kind == "extend":
            data += (os.urandom(args[0]) if args[1] else bytes(args[0]))
        elif kind == "flip" and data:
            for where, x in args[0]:
                data[min(int(where * len(data)), len(data) - 1)] ^= x
        elif kind == "page" and len(data) >= PAGE:
            pages = len(data) // PAGE
            at = (args[0] % pages) * PAGE
            fill = {"zeros": bytes(PAGE), "ones": b"\xff" * PAGE, "random": os.urandom(PAGE),
                    "copy": bytes(data[((args[0] // 7) % pages) * PAGE:][:PAGE])}[args[1]]
            data[at:at + PAGE] = fill[:PAGE].ljust(PAGE, b"\0")
        p.write_bytes(bytes(data))
        if vouch and p.name != "manifest.json":
            vouch_for(ds, [p.name])


# -- what a loader, verify and verify --decode make of it ---------------------------------------------------
def exercise(ds: Path) -> str:
    """Read everything as the loader, verify and verify --decode do; raise AssertionError on a broken rule."""
    import fastload
    from fastload import ops
    from fastload.errors import CorruptRecordError, FastloadError
    from fastload.formats import verify_dataset
    from fastload.verify_decode import decode_failures

    loaded, refused, open_error = 0, [], None
    try:
        d = fastload.ShardDataset(ds, transforms={"image": [ops.DecodeCenterCrop(24, resize=28)]})
        for i in range(len(d)):
            try:
                image, label = d[i]
                assert tuple(image.shape) == (3, 24, 24)
                loaded += 1
            except CorruptRecordError:
                refused.append(i)
    except FastloadError as e:
        open_error = e
    problems = verify_dataset(ds, progress=False)
    assert all(isinstance(p, str) and p for p in problems)
    if not problems:
        assert open_error is None, f"verify says OK, the loader refused: {open_error}"
    if refused:
        failures = decode_failures(ds, workers=0, progress=False)
        listed = {f.index for f in failures}
        assert set(refused) <= listed, f"loader refused {refused}, verify --decode listed {sorted(listed)}"
    if open_error is not None:
        return "refused at open"
    if refused:
        return "some records refused"
    return "all loaded, verify objects" if problems else "all loaded, verify OK"


# -- the child that runs many cases, and the parent that watches it ------------------------------------------
def _child(pristine: Path, backend: str, examples: int, fuzz_seed: int, progress_path: str, conn) -> None:
    try:
        with open("/proc/self/statm") as f:
            vm = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        resource.setrlimit(resource.RLIMIT_AS, (vm + MEMORY, resource.RLIM_INFINITY))
        work = Path(tempfile.mkdtemp(prefix=f"fuzz-{backend}-"))
        progress = open(progress_path, "w", buffering=1)
        counter = [0]
        outcomes: dict[str, int] = {}

        @seed(fuzz_seed)
        @settings(max_examples=examples, deadline=None, database=None, derandomize=False,
                  suppress_health_check=list(HealthCheck))
        @given(cases)
        def case(mutations):
            counter[0] += 1
            ds, outside = work / "ds", work / "outside"
            for p in (ds, outside):
                if os.path.lexists(p):
                    shutil.rmtree(p)
            shutil.copytree(pristine, ds)
            outside.mkdir()
            progress.write(f"{counter[0]}\t{mutations!r}\n")
            faulthandler.dump_traceback_later(CASE_TIMEOUT - 5, exit=False, file=progress)
            try:
                for m in mutations:
                    apply(ds, m, outside)
                outcome = exercise(ds)
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
            finally:
                faulthandler.cancel_dump_traceback_later()

        case()
        conn.send(("ok", outcomes))
    except BaseException as e:    # noqa: BLE001 - the parent reports it
        conn.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()[-6000:]}"))
    finally:
        conn.close()


def _last_case(progress_path: str) -> str:
    try:
        lines = [line for line in open(progress_path).read().splitlines() if line[:1].isdigit()]
        return lines[-1] if lines else "(none started)"
    except OSError:
        return "(no progress file)"


def run_fuzz(pristine: Path, backend: str, examples: int, fuzz_seed: int, tmp: Path) -> dict[str, int]:
    """Run ``examples`` cases in batches of ``BATCH``, each batch in a fresh child (seeded ``fuzz_seed + k``)."""
    outcomes: dict[str, int] = {}
    for k in range(0, examples, BATCH):
        for key, n in run_batch(pristine, backend, min(BATCH, examples - k), fuzz_seed + k // BATCH, tmp).items():
            outcomes[key] = outcomes.get(key, 0) + n
    return outcomes


def run_batch(pristine: Path, backend: str, examples: int, fuzz_seed: int, tmp: Path) -> dict[str, int]:
    progress_path = str(tmp / f"progress-{backend}.txt")
    open(progress_path, "w").close()
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_child, args=(pristine, backend, examples, fuzz_seed, progress_path, send))
    p.start()
    send.close()
    last_change, last_size = time.monotonic(), -1
    while not recv.poll(1.0):
        size = os.path.getsize(progress_path)
        if size != last_size:
            last_change, last_size = time.monotonic(), size
        if time.monotonic() - last_change > CASE_TIMEOUT or not p.is_alive():
            break
    if recv.poll(0):
        try:
            status, text = recv.recv()
        except EOFError:
            status, text = "crash", ""
    else:
        status, text = ("hang" if p.is_alive() else "crash"), ""
    p.kill()
    p.join()
    where = _last_case(progress_path)
    if status == "ok":
        return text
    tail = open(progress_path).read()[-4000:]
    raise AssertionError(f"{backend} fuzz (seed {fuzz_seed}): {status} (exit {p.exitcode}) in case {where}\n{text}\n"
                         f"progress tail:\n{tail}")


@pytest.fixture(scope="module")
def fuzz_pristine(photo_folder, tmp_path_factory) -> dict[str, Path]:
    """12 small real JPEGs, in 3 shards or one LMDB environment."""
    jpegs = []
    for data in photo_jpegs(photo_folder)[::3][:12]:
        buf = io.BytesIO()
        Image.open(io.BytesIO(data)).resize((48, 36)).save(buf, format="JPEG", quality=80)
        jpegs.append(buf.getvalue())
    root = tmp_path_factory.mktemp("fuzz")
    return {b: write_dataset(root / b, jpegs, b, shard_size=len(b"".join(jpegs)) // 3 + 1)
            for b in ("shards", "lmdb")}


@pytest.mark.timeout(900)
def test_mutated_datasets_only_raise_fastload_errors(fuzz_pristine, tmp_path):
    """Both backends at once (one watcher thread each; the cases run in child processes)."""
    started = time.monotonic()
    with ThreadPoolExecutor(2) as ex:
        futures = {b: ex.submit(run_fuzz, fuzz_pristine[b], b, EXAMPLES, SEED, tmp_path) for b in ("shards", "lmdb")}
    for backend, fut in futures.items():
        outcomes = fut.result()          # re-raises a batch's AssertionError (crash, hang, wrong error)
        print(f"{backend}: {sum(outcomes.values())} cases in {time.monotonic() - started:.0f}s (seed {SEED}): "
              f"{outcomes}", file=sys.stderr)
        # the damage reaches every layer: refused at open, refused record by record, loaded with verify objecting
        if EXAMPLES >= 500:
            for kind in ("refused at open", "some records refused", "all loaded, verify objects",
                         "all loaded, verify OK"):
                assert outcomes.get(kind, 0) > 0, f"{backend}: no case ended '{kind}': the mutations miss a layer"
