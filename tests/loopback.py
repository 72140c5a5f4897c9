"""Real servers on 127.0.0.1 for the remote-storage tests and benchmarks/bench_remote.py: a static HTTP
server with Range support, a fault-injecting HTTP proxy (latency, bandwidth cap, dropped connections, 503s,
truncated bodies, outages) and moto's S3 server. Every server listens on 127.0.0.1 only."""
from __future__ import annotations

import http.client
import http.server
import os
import random
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

_RANGE = re.compile(r"bytes=(\d+)-(\d*)")


@dataclass
class Counters:
    requests: int = 0
    bytes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, nbytes: int) -> None:
        with self.lock:
            self.requests += 1
            self.bytes += nbytes

    def reset(self) -> None:
        with self.lock:
            self.requests = self.bytes = 0


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256     # the default backlog of 5 drops SYNs under a burst of parallel GETs


class _Quiet(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass


class RangeServer:
    """Serves the files under ``root`` at ``http://127.0.0.1:PORT/``, honouring ``Range: bytes=a-b``."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.counters = Counters()
        outer = self

        class Handler(_Quiet):
            def _file(self) -> Path | None:
                p = (outer.root / self.path.split("?")[0].lstrip("/")).resolve()
                return p if p.is_file() and outer.root.resolve() in p.parents else None

            def do_HEAD(self) -> None:
                p = self._file()
                if p is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(p.stat().st_size))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()

            def do_GET(self) -> None:
                p = self._file()
                if p is None:
                    self.send_error(404)
                    return
                size = p.stat().st_size
                m = _RANGE.fullmatch(self.headers.get("Range", "") or "")
                lo, hi = 0, size
                if m:
                    lo = int(m.group(1))
                    hi = min(size, int(m.group(2)) + 1) if m.group(2) else size
                with open(p, "rb") as f:
                    f.seek(lo)
                    body = f.read(max(0, hi - lo))
                self.send_response(206 if m else 200)
                if m:
                    self.send_header("Content-Range", f"bytes {lo}-{hi - 1}/{size}")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                self.wfile.write(body)
                outer.counters.add(len(body))

        self.httpd = _Server(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._t = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._t.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@dataclass
class Faults:
    """What the proxy does to each request (rates are per request, drawn from a seeded RNG)."""
    latency: float = 0.0          # seconds added before answering
    bandwidth: float = 0.0        # bytes/s over all connections (0: no cap)
    drop: float = 0.0             # close the connection without an answer
    error503: float = 0.0         # answer 503 Slow Down
    truncate: float = 0.0         # announce the full length, send half the body, close
    outage: bool = False          # every request dropped
    seed: int = 0


class FaultProxy:
    """An HTTP reverse proxy on 127.0.0.1 in front of ``upstream`` (``http://127.0.0.1:PORT``) that
    injects ``faults`` and counts what passes (successful answers only)."""

    def __init__(self, upstream: str, faults: Faults | None = None):
        m = re.fullmatch(r"http://127\.0\.0\.1:(\d+)/?", upstream)
        assert m, "loopback upstreams only"
        self.upstream_port = int(m.group(1))
        self.faults = faults or Faults()
        self.counters = Counters()
        self.injected = Counters()
        self._rng = random.Random(self.faults.seed)
        self._rng_lock = threading.Lock()
        self._bw_lock = threading.Lock()
        self._bw_next = time.monotonic()
        self.spans: list[tuple[float, float, int]] = []    # (start, end, body bytes) of each answered GET
        outer = self

        class Handler(_Quiet):
            def _forward(self, method: str) -> None:
                f = outer.faults
                t0 = time.monotonic()
                with outer._rng_lock:
                    r = outer._rng.random()
                if f.latency:
                    time.sleep(f.latency)
                if f.outage or r < f.drop:
                    outer.injected.add(0)
                    self._drop()
                    return
                if r < f.drop + f.error503:
                    outer.injected.add(0)
                    body = b"<Error><Code>SlowDown</Code></Error>"
                    self.send_response(503)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                n = int(self.headers.get("Content-Length") or 0)
                payload = self.rfile.read(n) if n else None
                conn = http.client.HTTPConnection("127.0.0.1", outer.upstream_port, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items()
                               if k.lower() not in ("connection", "keep-alive", "proxy-connection")}
                    conn.request(method, self.path, body=payload, headers=headers)
                    resp = conn.getresponse()
                    body = resp.read()
                finally:
                    conn.close()
                truncate = r < f.drop + f.error503 + f.truncate and method == "GET" and len(body) > 1
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("connection", "keep-alive", "transfer-encoding", "content-length",
                                         "date", "server"):
                        self.send_header(k, v)
                # a HEAD answer has no body: its Content-Length is the object's, as upstream said
                length = resp.getheader("Content-Length", "0") if method == "HEAD" else str(len(body))
                self.send_header("Content-Length", length)
                self.end_headers()
                if method == "HEAD":
                    return
                if truncate:
                    outer.injected.add(0)
                    self.wfile.write(body[:len(body) // 2])
                    self.wfile.flush()
                    self._drop()
                    return
                outer._throttle(len(body))
                self.wfile.write(body)
                outer.counters.add(len(body))
                if method == "GET":
                    with outer.counters.lock:
                        outer.spans.append((t0, time.monotonic(), len(body)))

            def _drop(self) -> None:
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

            def do_GET(self) -> None:
                self._forward("GET")

            def do_HEAD(self) -> None:
                self._forward("HEAD")

            def do_PUT(self) -> None:
                self._forward("PUT")

            def do_POST(self) -> None:
                self._forward("POST")

            def do_DELETE(self) -> None:
                self._forward("DELETE")

        self.httpd = _Server(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._t = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._t.start()

    def _throttle(self, nbytes: int) -> None:
        bw = self.faults.bandwidth
        if not bw:
            return
        with self._bw_lock:
            now = time.monotonic()
            start = max(now, self._bw_next)
            self._bw_next = start + nbytes / bw
            wait = self._bw_next - now
        time.sleep(max(0.0, wait))

    def peak_in_flight(self, min_bytes: int = 0, slack: float = 0.002) -> int:
        """The most answered GETs of at least ``min_bytes`` that were in progress at once. A handler notes
        its end only once it has the GIL back, after the client may already have sent its next request:
        ends count ``slack`` seconds early."""
        with self.counters.lock:
            spans = [(a, b) for a, b, n in self.spans if n >= min_bytes]
        events = sorted([(a, 1) for a, _ in spans] + [(b - slack, -1) for _, b in spans])
        peak = now = 0
        for _, d in events:
            now += d
            peak = max(peak, now)
        return peak

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class S3Server:
    """moto's S3 API on 127.0.0.1 (a real HTTP server; it copies the whole object on every GET, so keep
    test objects small)."""

    def __init__(self):
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
        os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        from moto.server import ThreadedMotoServer
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.url = f"http://127.0.0.1:{port}"

    def options(self, endpoint: str | None = None) -> dict:
        """s3fs ``storage_options`` for this server (or for a proxy in front of it)."""
        return {"key": "testing", "secret": "testing",
                "client_kwargs": {"endpoint_url": endpoint or self.url, "region_name": "us-east-1"}}

    def make_bucket(self, name: str) -> None:
        import boto3
        boto3.client("s3", endpoint_url=self.url, region_name="us-east-1", aws_access_key_id="testing",
                     aws_secret_access_key="testing").create_bucket(Bucket=name)

    def close(self) -> None:
        self.server.stop()


# ------------------------------------------------------------------------------------------------------
# The servers in a process of their own. A server running inside the test process would have its sockets
# copied into every forked loader worker; a connection the server closes then stays open in the copies and
# a client reusing it waits for an answer that never comes. A child process (started before any worker)
# keeps the servers' sockets out of the workers.
def _control_server(root: str | None, s3: bool) -> None:
    import json
    import urllib.parse
    servers: dict[str, object] = {}
    out: dict[str, str] = {}
    if root:
        servers["range"] = RangeServer(root)
        out["range"] = servers["range"].url
    if s3:
        servers["s3"] = S3Server()
        out["s3"] = servers["s3"].url
    proxies: dict[int, FaultProxy] = {}

    class Control(_Quiet):
        def do_GET(self) -> None:
            u = urllib.parse.urlparse(self.path)
            q = {k: v[0] for k, v in urllib.parse.parse_qs(u.query).items()}
            if u.path == "/proxy":
                f = Faults(**{k: (v == "1" if k == "outage" else float(v) if k != "seed" else int(v))
                              for k, v in q.items() if k != "upstream"})
                p = FaultProxy(q["upstream"], f)
                proxies[p.port] = p
                body = {"url": p.url, "port": p.port}
            elif u.path == "/set":
                p = proxies[int(q.pop("port"))]
                for k, v in q.items():
                    setattr(p.faults, k, v == "1" if k == "outage" else float(v))
                body = {}
            elif u.path == "/stats":
                c = proxies[int(q["port"])] if "port" in q else servers["range"]
                body = {"requests": c.counters.requests, "bytes": c.counters.bytes,
                        "injected": getattr(c, "injected", Counters()).requests}
                if isinstance(c, FaultProxy):
                    body["peak_in_flight"] = c.peak_in_flight(int(q.get("min_bytes", 0)))
                if q.get("reset") == "1":
                    c.counters.reset()
                    if isinstance(c, FaultProxy):
                        c.spans.clear()
            elif u.path == "/bucket":
                servers["s3"].make_bucket(q["name"])
                body = {}
            else:
                self.send_error(404)
                return
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    ctl = _Server(("127.0.0.1", 0), Control)
    out["control"] = f"http://127.0.0.1:{ctl.server_address[1]}"
    print(json.dumps(out), flush=True)
    ctl.serve_forever()


class Proxy:
    """A FaultProxy living in the servers' process: ``url``, ``set(**faults)``, ``stats(reset=False)``."""

    def __init__(self, servers: "Servers", url: str, port: int):
        self._s, self.url, self.port = servers, url, port

    def set(self, **faults) -> None:
        self._s._get("/set", port=self.port, **{k: (int(v) if isinstance(v, bool) else v) for k, v in faults.items()})

    def stats(self, reset: bool = False, min_bytes: int = 0) -> dict:
        """Requests and bytes answered; ``peak_in_flight``: most GETs of ``min_bytes`` or more at once."""
        return self._s._get("/stats", port=self.port, reset=int(reset), min_bytes=min_bytes)


class Servers:
    """The loopback servers (a range HTTP server over ``root``, optionally moto S3) in a child process."""

    def __init__(self, root: str | os.PathLike | None = None, s3: bool = False):
        import json
        import subprocess
        import sys
        args = [sys.executable, __file__] + (["--root", str(root)] if root else []) + (["--s3"] if s3 else [])
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the loopback servers did not start")
        self.urls = json.loads(line)
        self.range_url = self.urls.get("range")
        self.s3_url = self.urls.get("s3")

    def _get(self, path: str, **q) -> dict:
        import json
        import urllib.parse
        import urllib.request
        url = self.urls["control"] + path + ("?" + urllib.parse.urlencode(q) if q else "")
        with urllib.request.urlopen(url, timeout=60) as r:
            return json.loads(r.read())

    def proxy(self, upstream: str, **faults) -> Proxy:
        body = self._get("/proxy", upstream=upstream, **{k: (int(v) if isinstance(v, bool) else v)
                                                          for k, v in faults.items()})
        return Proxy(self, body["url"], body["port"])

    def range_stats(self, reset: bool = False) -> dict:
        return self._get("/stats", reset=int(reset))

    def make_bucket(self, name: str) -> None:
        self._get("/bucket", name=name)

    def s3_options(self, endpoint: str | None = None) -> dict:
        return {"key": "testing", "secret": "testing",
                "client_kwargs": {"endpoint_url": endpoint or self.s3_url, "region_name": "us-east-1"}}

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("--root")
    ap.add_argument("--s3", action="store_true")
    a = ap.parse_args()
    _control_server(a.root, a.s3)
