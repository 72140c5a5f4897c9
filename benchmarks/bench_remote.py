"""Training from a remote endpoint: fastload vs WebDataset (HTTP) and LitData (S3 API), same photos, same
pipeline (JPEG decode, RandomResizedCrop 224, flip, uint8), served on loopback through a proxy that adds
latency and caps bandwidth (tests/loopback.py); and fastload from a cold local disk vs warm.

    .venv-vision/bin/python benchmarks/make_dataset.py --images 5000          # once (imagefolder, wds, litdata)
    PYTHONPATH=$PWD .venv-vision/bin/python benchmarks/bench_remote.py --latency 0.03 --bandwidth 200e6

Per contestant (each in its own process): epoch 1 and epoch 2 images/s, time to the first batch, GETs and
bytes through the proxy per epoch, peak cache disk. Writes benchmarks/results/remote.json and remote.md.
Every server listens on 127.0.0.1 only.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

DEFAULT_DATA = REPO / "benchmarks" / "data" / "bench"
BUCKET = "bench"


# --------------------------------------------------------------------------- the servers (own process)
def serve(a) -> None:
    """Range HTTP server over --data, moto S3 with the LitData chunks, a fault proxy before each, and a
    control server: GET /stats (counters of both proxies), GET /reset. Prints the endpoints as JSON."""
    import http.server
    from loopback import FaultProxy, Faults, RangeServer
    data = Path(a.data)
    web = RangeServer(data)
    faults = Faults(latency=a.latency, bandwidth=a.bandwidth, drop=a.drop)
    web_proxy = FaultProxy(web.url, faults)
    proxies = {"http": web_proxy}
    ends = {"http": web_proxy.url}
    if (data / "litdata").is_dir():
        try:
            from loopback import S3Server
            s3 = S3Server()
            s3.make_bucket(BUCKET)
            import boto3
            c = boto3.client("s3", endpoint_url=s3.url, region_name="us-east-1", aws_access_key_id="testing",
                             aws_secret_access_key="testing")
            for p in sorted((data / "litdata").iterdir()):
                if p.is_file():
                    c.upload_file(str(p), BUCKET, f"litdata/{p.name}")
            s3_proxy = FaultProxy(s3.url, faults)
            proxies["s3"] = s3_proxy
            ends["s3"] = s3_proxy.url
        except Exception as e:   # moto/boto3 missing: LitData is reported as not run
            ends["s3_error"] = f"{type(e).__name__}: {e}"

    class Control(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            body = json.dumps({k: {"requests": p.counters.requests, "bytes": p.counters.bytes}
                               for k, p in proxies.items()}).encode()
            if self.path == "/reset":      # the counts so far, then zero
                for p in proxies.values():
                    p.counters.reset()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    ctl = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Control)
    ends["control"] = f"http://127.0.0.1:{ctl.server_address[1]}"
    print(json.dumps(ends), flush=True)
    ctl.serve_forever()


def _control(ends: dict, what: str) -> dict:
    import urllib.request
    with urllib.request.urlopen(f"{ends['control']}/{what}", timeout=30) as r:
        return json.loads(r.read())


# --------------------------------------------------------------------------- the contestants (own process)
def _du(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
            except OSError:
                pass
    return total


def _epochs(make, ends: dict | None, epochs: int, cache: Path | None, proxy: str) -> dict:
    """Run ``epochs`` epochs of the loader ``make()`` builds; per epoch img/s, GETs, bytes."""
    t0 = time.perf_counter()
    if ends:
        _control(ends, "reset")
    loader = make()
    out = {"epochs": []}
    peak = [0]
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            if cache is not None:
                peak[0] = max(peak[0], _du(cache))
            stop.wait(0.1)
    w = threading.Thread(target=watch, daemon=True)
    w.start()
    for e in range(epochs):
        n = 0
        start = time.perf_counter() if e else t0
        first = None
        first_n = 0
        for images, labels in loader:
            if first is None:
                first = time.perf_counter() - start
                first_n = len(labels)
            n += len(labels)
        dt = time.perf_counter() - start
        rec = {"images": n, "seconds": dt, "img_s": n / dt, "first_batch_s": first,
               # the steady rate, without worker start-up and the first fetch
               "img_s_after_first": (n - first_n) / max(dt - (first or 0), 1e-9)}
        if ends:
            s = _control(ends, "reset")[proxy]
            rec.update(gets=s["requests"], bytes=s["bytes"])
        out["epochs"].append(rec)
    stop.set()
    w.join()
    out["peak_cache_bytes"] = peak[0]
    return out


def run_peer(a) -> dict:
    ends = json.loads(a.endpoints) if a.endpoints else None
    tmp = Path(tempfile.mkdtemp(prefix="bench-remote-"))
    bs, nw = a.batch_size, a.workers
    if a.peer in ("fastload", "fastload_local", "fastload_cold"):
        import fastload
        from fastload import ops
        from benchmarks.peers._common import RATIO, SCALE, SIZE
        tf = {"image": [ops.DecodeRandomResizedCrop(SIZE, scale=SCALE, ratio=RATIO), ops.RandomHorizontalFlip()]}
        local = Path(a.data) / "fastload-remote"
        if a.peer == "fastload":
            def make():
                ds = fastload.ShardDataset(f"{ends['http']}/fastload-remote", transforms=tf, cache_dir=tmp / "cache",
                                           cache_limit=a.cache_limit)
                return fastload.DataLoader(ds, batch_size=bs, shuffle=True, num_workers=nw, seed=0,
                                           persistent_workers=nw > 0)
            res = _epochs(make, ends, a.epochs, tmp / "cache", "http")
        elif a.peer == "fastload_local":
            def make():
                ds = fastload.ShardDataset(local, transforms=tf)
                return fastload.DataLoader(ds, batch_size=bs, shuffle=True, num_workers=nw, seed=0,
                                           persistent_workers=nw > 0)
            res = _epochs(make, None, a.epochs, None, "")
        else:   # cold local disk: the shards' pages dropped from the page cache before each order
            res = {"epochs": []}
            for order in ("random-warmup", "block", "random", "block-warm"):
                if order in ("block", "random"):
                    for p in local.glob("*.fls"):
                        fd = os.open(p, os.O_RDONLY)
                        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                        os.close(fd)

                def make(order=order):
                    ds = fastload.ShardDataset(local, transforms=tf)
                    return fastload.DataLoader(ds, batch_size=bs, num_workers=nw, seed=0,
                                               order=order.split("-")[0])
                r = _epochs(make, None, 1, None, "")["epochs"][0]
                r["order"] = order
                if order != "random-warmup":
                    res["epochs"].append(r)
    elif a.peer == "webdataset":
        import webdataset as wds
        from benchmarks.peers.webdataset_peer import SHUFFLE_BUFFER, _collate, _Decode
        names = (Path(a.data) / "webdataset" / "shards.txt").read_text().split()
        urls = [f"pipe:curl -s -f {ends['http']}/webdataset/{s}" for s in names]

        def make():
            ds = (wds.WebDataset(urls, shardshuffle=len(urls), seed=0, empty_check=False,
                                 nodesplitter=wds.single_node_only)
                  .shuffle(SHUFFLE_BUFFER).map(_Decode()).batched(bs, collation_fn=_collate, partial=True))
            return wds.WebLoader(ds, batch_size=None, num_workers=nw, persistent_workers=nw > 0)
        res = _epochs(make, ends, a.epochs, None, "http")
    elif a.peer == "litdata":
        if "s3" not in ends:
            return {"peer": a.peer, "error": ends.get("s3_error", "no S3 endpoint")}
        import litdata
        import litdata.streaming.downloader as ld
        from benchmarks.peers.litdata_peer import _Decode
        # the loopback endpoint is plain http: let LitData's object-store client use it
        ld._OBSTORE_CLIENT_OPTIONS = {**ld._OBSTORE_CLIENT_OPTIONS, "allow_http": "true"}
        os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                          AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL=ends["s3"], AWS_ALLOW_HTTP="true")

        def make():
            ds = litdata.StreamingDataset(f"s3://{BUCKET}/litdata", shuffle=True, seed=0, drop_last=False,
                                          transform=_Decode(), cache_dir=str(tmp / "litcache"),
                                          storage_options={"endpoint_url": ends["s3"]})
            return litdata.StreamingDataLoader(ds, batch_size=bs, num_workers=nw, persistent_workers=nw > 0)
        res = _epochs(make, ends, a.epochs, tmp / "litcache", "s3")
    else:
        raise SystemExit(f"unknown peer {a.peer}")
    return {"peer": a.peer, **res}


# --------------------------------------------------------------------------- the driver
def _prepare(data: Path) -> None:
    import fastload
    dst = data / "fastload-remote"
    if not (dst / "manifest.json").exists():
        fastload.convert(str(data / "imagefolder"), str(dst), shard_size="64MB", overwrite=True, progress=False)


def _table(results: list[dict], a) -> str:
    lines = [f"Loopback endpoint with {a.latency * 1000:.0f} ms added latency, {a.bandwidth / 1e6:.0f} MB/s cap, "
             f"{a.drop:.0%} dropped connections; batch {a.batch_size}, {a.workers} workers.", "",
             "epoch 1 counts from building the loader (worker start-up included); 'after 1st' leaves out the first "
             "batch.", "",
             "| loader | epoch 1 img/s | epoch 1 after 1st | epoch 2 img/s | e1/e2 (after 1st) | first batch s | "
             "GETs e1 / e2 | MB e1 / e2 | peak cache MB |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['peer']} | not run: {r['error'][:80]} ||||||||")
            continue
        if r["peer"] == "fastload_cold":
            for e in r["epochs"]:
                lines.append(f"| fastload local, cold disk, order={e['order']} | {e['img_s']:.0f} | "
                             f"{e['img_s_after_first']:.0f} | | | {e['first_batch_s']:.2f} | | | |")
            continue
        e = r["epochs"]
        e1, e2 = e[0], e[-1]
        gets = " / ".join(str(x.get("gets", "")) for x in e[:2])
        mb = " / ".join(f"{x['bytes'] / 1e6:.0f}" if "bytes" in x else "" for x in e[:2])
        ratio = e1["img_s_after_first"] / e2["img_s_after_first"]
        lines.append(f"| {r['peer']} | {e1['img_s']:.0f} | {e1['img_s_after_first']:.0f} | {e2['img_s']:.0f} | "
                     f"{e1['img_s'] / e2['img_s']:.2f} ({ratio:.2f}) | {e1['first_batch_s']:.2f} | {gets} | {mb} | "
                     f"{r.get('peak_cache_bytes', 0) / 1e6:.0f} |")
    return "\n".join(lines) + "\n"


def _python_with(modules: tuple[str, ...]) -> str:
    import importlib.util
    import shutil
    if all(importlib.util.find_spec(m) for m in modules):
        return sys.executable
    return shutil.which("python3") or sys.executable


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--latency", type=float, default=0.03)
    p.add_argument("--bandwidth", type=float, default=200e6, help="bytes/s over all connections")
    p.add_argument("--drop", type=float, default=0.0, help="share of requests whose connection is dropped")
    p.add_argument("--cache-limit", default=None)
    p.add_argument("--peers", default="fastload_local,fastload,webdataset,litdata,fastload_cold")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "remote"))
    p.add_argument("--fastload-python", default=None,
                   help="interpreter for the servers and fastload (needs fsspec, aiohttp, moto; default: this one "
                        "if it has them, else python3 on PATH)")
    p.add_argument("--peer-python", default=None,
                   help="interpreter for WebDataset / LitData (default: .venv-vision/bin/python if present)")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--peer", help=argparse.SUPPRESS)
    p.add_argument("--endpoints", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.serve:
        serve(a)
        return 0
    if a.peer:
        print("RESULT " + json.dumps(run_peer(a)), flush=True)
        return 0
    fl_py = a.fastload_python or _python_with(("fsspec", "aiohttp", "moto"))
    venv = REPO / ".venv-vision" / "bin" / "python"
    peer_py = a.peer_python or (str(venv) if venv.exists() else sys.executable)
    subprocess.run([fl_py, "-c", "import sys; sys.path.insert(0, sys.argv[1]); import bench_remote as b; "
                    "from pathlib import Path; b._prepare(Path(sys.argv[2]))", str(REPO / "benchmarks"), a.data],
                   check=True)
    srv = subprocess.Popen([fl_py, __file__, "--serve", "--data", a.data, "--latency", str(a.latency),
                            "--bandwidth", str(a.bandwidth), "--drop", str(a.drop)], stdout=subprocess.PIPE, text=True)
    try:
        ends = srv.stdout.readline().strip()
        results = []
        for peer in a.peers.split(","):
            py = fl_py if peer.startswith("fastload") else peer_py
            cmd = [py, __file__, "--peer", peer, "--endpoints", ends, "--data", a.data, "--workers",
                   str(a.workers), "--batch-size", str(a.batch_size), "--epochs", str(a.epochs)]
            if a.cache_limit:
                cmd += ["--cache-limit", a.cache_limit]
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
            line = next((l for l in r.stdout.splitlines() if l.startswith("RESULT ")), None)
            err = [l for l in r.stderr.strip().splitlines() if "Error" in l or "error" in l] or ["?"]
            res = json.loads(line[7:]) if line else {"peer": peer, "error": err[-1].strip()}
            print(json.dumps(res), flush=True)
            results.append(res)
    finally:
        srv.terminate()
        srv.wait()
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"command": " ".join(sys.argv), "fastload_python": fl_py, "peer_python": peer_py, "latency": a.latency, "bandwidth": a.bandwidth, "drop": a.drop,
            "workers": a.workers, "batch_size": a.batch_size}
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    out.with_suffix(".md").write_text(_table(results, a))
    print(_table(results, a))
    return 0


if __name__ == "__main__":
    sys.exit(main())
