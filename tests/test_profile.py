"""``fastload.profile()``: each bottleneck built for real, and the verdict checked against it.

* storage-bound: the dataset read through a simulated 0.5 MB/s device shared by every worker process;
* decode-bound: 1600x1200 JPEGs decoded at full size (no DCT downscale), then more ops;
* transfer-bound: a simulated (labelled so) host-to-device copy at 5 MB/s;
* model-bound: a slow training step, data stall near 0%;
plus the ImageFolder comparison, a torch DataLoader, a plain iterable, Ctrl-C, the trace, the plot, the CLI.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import fastload
from fastload import ops
from fastload.demo_data import make_photo_imagefolder
from fastload.profiling import ProfileReport, ThrottledReader, validate_trace
from fastload.profiling import profile as run_profile
from fastload.profiling.verdict import Bound, Resource

REPO = Path(__file__).resolve().parents[1]
SMALL = {"image": [ops.DecodeRandomResizedCrop(64), ops.RandomHorizontalFlip()]}
FAST = dict(seconds=0.6, cold=False, progress=False, prefetch=[2])


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory) -> Path:
    return make_photo_imagefolder(tmp_path_factory.mktemp("prof_small"), images_per_class=6, size=(160, 120))


@pytest.fixture(scope="module")
def small_ds(small_folder, tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("prof_small_ds") / "ds"
    fastload.convert(small_folder, dst, workers=0, progress=False, print_summary=False)
    return dst


@pytest.fixture(scope="module")
def big_ds(tmp_path_factory) -> Path:
    src = make_photo_imagefolder(tmp_path_factory.mktemp("prof_big"), images_per_class=4, classes=3,
                                 size=(1600, 1200), quality=95)
    dst = tmp_path_factory.mktemp("prof_big_ds") / "ds"
    fastload.convert(src, dst, workers=0, progress=False, print_summary=False)
    return dst


def _ceil(rep: ProfileReport, name: str) -> float:
    return rep.verdict.ceilings[name].samples_s


# report.json's keys, per part (docs/PROFILE.md: "report.json ... the same numbers, machine-readable"): users
# and scripts read these, so a change to them must be deliberate (edit here and in CHANGELOG.md)
JSON_TOP = {"target", "machine", "settings", "storage", "cpu", "compare", "sweep", "transfer", "stall", "order",
            "partial", "interrupted_in", "notes", "files", "verdict"}
JSON_KEYS = {
    "machine": {"cpu", "cores", "cpu_count", "memory_bytes", "memory_available_bytes", "cuda", "python", "torch",
                "fastload", "platform"},
    "settings": {"steps", "seconds_per_point", "cold", "seed", "transfer_gbps_simulated", "simulated_storage_mb_s"},
    "storage": {"files", "bytes", "readers", "resident_before", "cold", "warm"},
    "storage.warm": {"sequential", "random"},
    "storage.cold": {"resident_after_evict", "sequential", "resident_before_random", "random"},
    "sequential": {"bytes", "seconds", "mb_s"},
    "random": {"records", "bytes", "seconds", "records_s", "mb_s"},
    "cpu": {"samples", "stages", "source", "wall_ms", "cpu_ms", "fused", "per_sample_cpu_ms", "ceiling",
            "decode_stats"},
    "cpu.stages": {"name", "kind", "wall_ms", "cpu_ms", "share"},
    "cpu.fused": {"samples", "wall_ms", "cpu_ms"},
    "cpu.ceiling": {"cores", "per_core", "samples_s"},
    "cpu.decode_stats": {"decoded", "pil_fallback", "partial", "dct_scaled", "native"},
    "sweep": {"loader", "seconds", "points", "knee", "best"},
    "sweep.point": {"workers", "prefetch", "batches", "seconds", "samples_s", "first_batch_s", "samples", "batch_size",
                    "bytes_per_sample", "dtypes", "cores_busy", "other_cores_busy", "cpu_seconds", "peak_memory_bytes",
                    "memory_kind", "stage_seconds", "stage_samples"},
    "transfer": {"cuda", "note", "simulated_gb_s"},
    "stall": {"loader", "step", "simulated_step", "steps", "first_batch_s", "epochs", "bytes_per_sample", "cores_busy",
              "peak_memory_bytes", "other_cores_busy", "wait_ms", "step_ms", "stall_pct", "samples_s", "batch_size",
              "demand_s", "copy", "stage_seconds", "num_workers"},
    "stall.copy": {"simulated", "what", "bytes", "ms_per_batch", "gb_s", "exposed_ms_per_step",
                   "loader_wait_ms_per_step", "hidden_pct"},
}


def test_report_json_keeps_its_keys(small_ds):
    ds = fastload.ShardDataset(small_ds, transforms=SMALL)
    rep = run_profile(ds, batch_size=8, workers=[0, 1], prefetch=[2], seconds=0.3, steps=3, step_time=0.005,
                      transfer_gbps=1.0, cold=True, progress=False)
    d = json.loads(rep.to_json())

    def keys(x: dict, name: str, extra: set = frozenset()) -> None:
        assert set(x) - set(extra) == JSON_KEYS[name], f"{name}: {sorted(set(x) ^ JSON_KEYS[name])}"
    assert set(d) == JSON_TOP
    assert d["compare"] is None and d["order"] is None and d["partial"] is False
    for part in ("machine", "settings", "storage", "cpu", "sweep", "transfer", "stall"):
        keys(d[part], part)
    st = d["storage"]
    keys(st["warm"], "storage.warm")
    if st["cold"] != {"skipped": st["cold"].get("skipped")}:      # tmpfs and the like: skipped, with why
        keys(st["cold"], "storage.cold")
        keys(st["cold"]["sequential"], "sequential")
        keys(st["cold"]["random"], "random")
    keys(st["warm"]["sequential"], "sequential")
    keys(st["warm"]["random"], "random")
    for s in d["cpu"]["stages"]:
        keys(s, "cpu.stages")
    for part in ("fused", "ceiling", "decode_stats"):
        keys(d["cpu"][part], f"cpu.{part}")
    points = [*d["sweep"]["points"], d["sweep"]["knee"], d["sweep"]["best"]]
    for p in points:
        # with workers: how busy they were (and, from the loader's wait-for-slot stage, how long they idled)
        keys(p, "sweep.point", {"workers_busy", "workers_waiting_for_slot"} if p["workers"] else set())
        assert p["workers"] == 0 or "workers_busy" in p
    keys(d["stall"]["copy"], "stall.copy")
    assert set(d["verdict"]) >= {"bound", "resource", "headline", "ceilings", "evidence", "actions"}


def test_storage_bound_through_a_slow_shared_device(small_ds):
    ds = fastload.ShardDataset(small_ds, transforms=SMALL)
    rep = run_profile(ds, simulate_storage_mb_s=0.5, batch_size=8, workers=[1, 2], steps=0, **FAST)
    v = rep.verdict
    assert v.bound == "storage", rep.text()
    assert v.headline.startswith("Storage-bound")
    storage, cpu, loader = _ceil(rep, "storage"), _ceil(rep, "cpu"), _ceil(rep, "loader")
    # one simulated device for all processes: two workers cannot read faster than the device
    assert loader <= 1.3 * storage, rep.text()
    assert storage < 0.5 * cpu          # (the CPU ceiling is what other processes left of the cores)
    assert any("Faster storage" in a for a in v.actions)
    assert "SIMULATED slow storage" in rep.text()
    # the probe went through the same simulated device (sequential reads too)
    assert rep.storage.warm.sequential.mb_s < 0.75
    assert not isinstance(ds.reader, ThrottledReader)   # the caller's dataset is untouched


def test_decode_bound_on_big_jpegs(big_ds, tmp_path):
    # reducing_gap=8 keeps the JPEG decode at full size: ~15 ms of CPU per 1600x1200 image
    heavy = {"image": [ops.DecodeRandomResizedCrop(128, scale=(0.6, 1.0), reducing_gap=8),
                       ops.RandomHorizontalFlip(), ops.CenterCrop(112)]}
    ds = fastload.ShardDataset(big_ds, transforms=heavy)
    rep = run_profile(ds, batch_size=4, workers=[0, 2], steps=6, out=tmp_path / "out", **FAST)
    v = rep.verdict
    assert v.resource == "cpu" and v.bound == "decode", rep.text()
    stages = rep.cpu.stages
    top = max(stages, key=lambda s: s.cpu_ms)
    assert top.name.startswith("decode+random-resized-crop") and top.share > 0.5
    assert [s.name for s in stages][-2:] == ["augment: CenterCrop(size=(112, 112))",
                                             "collate (in place; labels from the index)"]
    # whether the native JPEG path ran is reported (on where the extension is built)
    native = rep.cpu.decode_stats.native
    assert native["available"] == ops.jpeg.partial_decode_available()
    assert ("native decode+resize (libjpeg-turbo" if native["available"] else "native decode+resize OFF") in rep.text()
    if native["available"]:
        assert rep.cpu.decode_stats.partial == rep.cpu.decode_stats.decoded > 0
    # the loader is near what the cores allow, and storage is far above
    assert _ceil(rep, "loader") >= 0.5 * _ceil(rep, "cpu")
    assert _ceil(rep, "storage") > 5 * _ceil(rep, "cpu")
    # the --max-side suggestion is measured, and it does help
    wi = rep.cpu.what_if_max_side
    assert wi.max_side == 256 and wi.cpu_ms_after < 0.5 * wi.cpu_ms_before
    assert any("--max-side 256" in a for a in v.actions)
    # the workers and the main process are in the trace, on one timeline
    trace = json.loads((tmp_path / "out" / "trace.json").read_text())
    assert validate_trace(trace) == []
    xs = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    worker_pids = {e["pid"] for e in xs if e["name"] == "read+decode+augment" and e["pid"] >= 100}
    assert worker_pids == {100, 101}                  # the 2-worker run, whichever run was best
    assert {"wait-for-data", "step", "wait-for-batch"} <= {e["name"] for e in xs if e["pid"] == 1}
    names = {e["args"]["name"] for e in trace["traceEvents"] if e["ph"] == "M" and e["name"] == "process_name"}
    assert {"main process", "worker 0", "worker 1"} <= names


def test_transfer_bound_simulated_and_labelled(small_ds):
    ds = fastload.ShardDataset(small_ds, transforms=SMALL)
    rep = run_profile(ds, transfer_gbps=0.0025, batch_size=16, workers=[1], steps=12, **FAST)
    v = rep.verdict
    assert v.bound == "transfer", rep.text()
    assert "SIMULATED" in v.headline and "no GPU" in v.headline
    assert rep.verdict.ceilings["transfer"].simulated is True
    copy = rep.stall.copy
    assert copy.simulated and 0.0015 < copy.gb_s < 0.00275
    # the step received what the copy allows: ~12 KB per sample at 2.5 MB/s is ~200 samples/s, well under
    # what the CPU left by other processes allows
    assert rep.stall.samples_s <= 1.25 * _ceil(rep, "transfer")
    assert _ceil(rep, "transfer") < 0.5 * _ceil(rep, "cpu")
    text = rep.text()
    assert "no CUDA" in text and "SIMULATED copy" in text
    assert any("simulated copy rate" in a for a in v.actions)


def test_copy_overlap_is_split_from_the_loader_wait(small_ds):
    ds = fastload.ShardDataset(small_ds, transforms=SMALL)
    quick = dict(batch_size=16, steps=10, transfer_gbps=0.0025, sweep=False, cpu=False, storage=False,
                 progress=False)
    # an ~80 ms copy (16 x ~12 KB at 2.5 MB/s) behind a 120 ms step is hidden; behind a 40 ms step, about 40 ms
    # of it shows. The loader needs only ~200 samples/s to keep up, a few % of a core
    hidden = run_profile(ds, step_time=0.12, **quick)
    assert hidden.bound == "model" and hidden.stall.copy.hidden_pct > 85
    shown = run_profile(ds, step_time=0.04, **quick)
    c = shown.stall.copy
    assert 25 < c.exposed_ms_per_step < 60 and 25 < c.hidden_pct < 70, shown.text()
    if c.loader_wait_ms_per_step < 0.25 * c.exposed_ms_per_step:
        # the loader kept up: what the step waits for is the copy
        assert shown.bound == "transfer", shown.text()
        assert 30 < shown.stall.stall_pct < 65
    else:
        # so busy a machine that even this loader fell behind: the profiler must not blame the copy alone,
        # and must say the machine was shared
        assert shown.bound in ("transfer", "loader"), shown.text()
        assert any("shared the machine with other processes" in e for e in shown.verdict.evidence), shown.text()


def test_model_bound_slow_step_has_no_stall(small_ds):
    ds = fastload.ShardDataset(small_ds, transforms=SMALL)
    # a 200 ms step: a waking VM core costs ~1-3 ms per batch, which must stay small next to the step
    rep = run_profile(ds, step_time=0.2, batch_size=8, workers=[1], steps=8, **FAST)
    v = rep.verdict
    assert v.bound == "model", rep.text()
    assert rep.stall.stall_pct < 5
    assert rep.stall.simulated_step is True
    assert v.factor > 3                       # the loader could feed a much faster model
    assert "(simulated)" in v.headline


def test_imagefolder_is_compared_with_fastload_ops(small_folder, tmp_path):
    rep = run_profile(small_folder, batch_size=8, size=64, workers=[0], steps=0, out=tmp_path, **FAST)
    assert rep.target["kind"].startswith("ImageFolder")
    stages = rep.cpu.stages
    assert [s.kind for s in stages] == ["read", "decode", "augment", "augment", "convert", "normalize", "collate"]
    assert stages[1].name == "decode (PIL)" and stages[2].name.startswith("augment: RandomResizedCrop(")
    assert "torchvision" in rep.target["pipeline_name"] and "compared on the same files: rrc" in rep.target["pipeline_name"]
    cmp_ = rep.compare
    assert cmp_.gain > 1.0 and cmp_.fastload_ceiling_s > cmp_.pil_ceiling_s
    assert cmp_.fastload_stages is None and rep.cpu.compare.fastload_stages     # the stages are in cpu.compare
    assert "through fastload's fused ops" in rep.text()
    if rep.verdict.resource == "cpu":
        assert any("fastload convert" in a for a in rep.verdict.actions)
    assert rep.sweep.points[0].dtypes == ["float32", "int64"]


def test_torch_dataloader_with_a_real_step(small_folder):
    from fastload.profiling.imagefolder import PILImageFolder, classic_train_transform
    loader = torch.utils.data.DataLoader(PILImageFolder(small_folder, classic_train_transform(48)), batch_size=6,
                                         shuffle=True)
    seen = []

    def train_step(batch):
        images, labels = batch
        seen.append(images.shape)
        time.sleep(0.05)
    rep = fastload.profiling.profile(loader, steps=5, step=train_step, workers=[0, 1], **FAST)
    assert rep.stall.step == "train_step(batch)" and rep.stall.simulated_step is False
    assert seen and all(s == (6, 3, 48, 48) for s in seen) and len(seen) == 6      # first batch + 5 steps
    assert rep.storage.files == 60                                                  # the dataset's files
    assert {s.kind for s in rep.cpu.stages} == {"read", "decode", "augment", "convert", "normalize", "collate"}
    assert [p.workers for p in rep.sweep.points] == [0, 1]
    assert rep.verdict.bound in ("model", "decode", "augment", "loader")


def test_plain_iterable_and_the_profile_function():
    import inspect
    import fastload.profiling
    assert inspect.isfunction(fastload.profile) and not callable(fastload.profiling)   # no callable module
    batches = [torch.zeros(4, 3)] * 10
    rep = fastload.profile(batches, steps=5, step_time=0.01, progress=False)
    assert rep.verdict.bound == "model"
    assert rep.sweep.skipped and rep.cpu.skipped
    assert rep.storage.skipped and rep.stall.skipped is None
    d = rep.to_dict()
    assert d["sweep"] == {"skipped": rep.sweep.skipped} and d["cpu"] == {"skipped": rep.cpu.skipped}
    assert "Model-bound" in rep.text()


def test_ctrl_c_in_the_stall_run_gives_a_partial_report(small_ds):
    ds = fastload.ShardDataset(small_ds, transforms=SMALL)
    calls = []

    def step(batch):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
    rep = run_profile(ds, step=step, batch_size=8, workers=[1], steps=50, **FAST)
    assert rep.partial and rep.interrupted_in == "stall"
    assert rep.sweep.points and rep.verdict.bound   # what was measured is kept and judged
    assert rep.stall.to_dict() == {"loader": rep.stall.loader, "step": "", "steps": 0}    # the run did not finish
    assert "PARTIAL" in rep.text()


def test_cli_ctrl_c_prints_the_partial_report(small_ds, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "fastload.profiling", str(small_ds), "--out", str(tmp_path),
                             "--size", "64", "--batch-size", "8", "--workers", "0,1,2,1,2", "--seconds", "3",
                             "--no-cold", "--no-plot"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    deadline = time.monotonic() + 60
    err = ""
    while time.monotonic() < deadline:          # wait until the sweep is running
        line = proc.stderr.readline()
        err += line
        if "loader workers=0" in line or not line:
            break
    proc.send_signal(signal.SIGINT)
    out, rest = proc.communicate(timeout=60)
    assert proc.returncode == 130, err + rest
    assert "PARTIAL" in out and "interrupted during sweep" in out
    assert "VERDICT" in out
    assert (tmp_path / "report.json").exists() and json.loads((tmp_path / "report.json").read_text())["partial"]


def test_cli_json_files_and_plot(small_ds, tmp_path, capsys):
    import argparse
    from fastload.profiling.cli import add_parser, run
    parser = argparse.ArgumentParser(prog="fastload")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["profile", str(small_ds), "--json", "--out", str(tmp_path / "p"), "--size", "64",
                              "--batch-size", "8", "--workers", "0,1", "--prefetch", "2", "--seconds", "0.5",
                              "--steps", "4", "--step-ms", "5", "--pipeline", "center", "-q"])
    assert args.func(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["verdict"]["bound"] in {b.value for b in Bound} and report["stall"]["steps"] == 4
    assert report["target"]["pipeline_name"].startswith("center: ")       # the report says which pipeline ran
    assert report["target"]["pipeline"]["image"].startswith("DecodeCenterCrop(size=(64, 64)")
    assert report["storage"]["cold"]     # measured, or skipped with the reason
    for name in ("report.txt", "report.json", "trace.json"):
        assert (tmp_path / "p" / name).stat().st_size > 0
    assert validate_trace(json.loads((tmp_path / "p" / "trace.json").read_text())) == []
    pytest.importorskip("matplotlib")
    png = (tmp_path / "p" / "profile.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    assert run is args.func


def test_pipeline_choice_and_user_callables_are_profiled(small_ds):
    only_cpu = dict(batch_size=8, size=48, steps=0, sweep=False, storage=False, **FAST)
    rep = run_profile(small_ds, pipeline="decode", **only_cpu)
    assert rep.target["pipeline_name"].startswith("decode: ")
    assert "pipeline  decode: full-size decode" in rep.text()
    assert [s.kind for s in rep.cpu.stages] == ["read", "decode", "augment", "collate"]
    with pytest.raises(ValueError, match="unknown pipeline 'crop'.*rrc, center, decode"):
        run_profile(small_ds, pipeline="crop", **only_cpu)
    with pytest.raises(ValueError, match="applies to a dataset path"):
        run_profile(fastload.ShardDataset(small_ds, transforms=SMALL), pipeline="rrc", **only_cpu)

    def jitter(x):                       # a user's own augmentation, after the fused crop: 2 ms CPU a sample
        end = time.thread_time() + 0.002
        while time.thread_time() < end:
            pass
        return x.flip(-1)
    ds = fastload.ShardDataset(small_ds, transforms={"image": [*SMALL["image"], jitter, ops.ToDtype(torch.float32)]})
    rep = run_profile(ds, **only_cpu)
    assert rep.target["pipeline_name"] == "the dataset's own transforms"
    rows = {s.kind: s for s in rep.cpu.stages if s.name.startswith("callables: ")}
    row = rows["augment"]
    assert "jitter" in row.name and "ToDtype" in row.name
    assert row.cpu_ms > 1.0 and row.share > 0.5          # the callables' time, measured by their stage
    assert rep.verdict.bound is Bound.AUGMENT and rep.verdict.resource is Resource.CPU, rep.text()
