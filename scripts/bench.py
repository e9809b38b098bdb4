#!/usr/bin/env python3
"""`make bench`: measure our host against its baselines in one run.

Servers, all on loopback, all serving the same 14-byte hello:
  native          a plain hyper 1 server (bench/, `native-hello`)
  host            our host with the default guest (fresh instance per request)
  host-reuse      the same with `--instance-reuse 128`
  wasmtime        `wasmtime serve -Scli` 48.0.8 on the same .wasm
  wasmtime-reuse  the same with `--max-instance-reuse-count 128`

Each is driven by wrk at concurrency 1, 64 and 256, interleaved, for
ROUNDS rounds; the median of the rounds is reported with ratios to native
and to wasmtime serve in the same mode, and the server's CPU time per
request (from /proc, less sensitive to a noisy machine than req/s). Also:
the in-process criterion microbench (instantiate + handle), cold start
(deploy -> first 200 for the hello and a several-MB guest, restart with 100
deployed apps -> all ready), idle RSS and RSS with many deployed apps, and
a 64 MiB streamed echo against native. The results replace the measured
part of BENCHMARKS.md (between its `bench:begin` / `bench:end` markers); the
written analysis after it stays.

Every server runs without RUST_BACKTRACE: with it set, wasmtime captures a
backtrace for an error it builds and drops on every instance teardown,
which costs the fresh-instance servers a third of their throughput.

Components from other toolchains (built by `make build-guests`; a missing
one is skipped with a note): Python (componentize-py), JavaScript
(componentize-js) and Rust on WASI 0.3, each on our host and on `wasmtime
serve` in the same run: a fresh instance per request at c=16 (and, for the
WASI 0.3 one, at c=64 fresh and with instance reuse against wasmtime
serve's default reuse), deploy -> first 200 and restart -> first 200 on our
host, and RSS with FOREIGN_APPS deployed Python apps.

Everything it starts is stopped before it exits; it only talks to
127.0.0.1. Environment: ROUNDS (3), DURATION seconds per run (5),
APPS (1000) for the many-apps RSS measurement, FOREIGN_APPS (50) for the
many-Python-apps one. BENCH_ONLY=foreign,cold,... runs only those sections
(throughput, micro, cold, memory, echo, foreign) and prints the report
instead of writing BENCHMARKS.md; NO_BUILD=1 uses the binaries already in
target/ instead of building them.
"""

import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.path.join(ROOT, "target")
HOST = os.path.join(TARGET, "release", "host")
NATIVE = os.path.join(TARGET, "release", "native-hello")
GUEST = os.path.join(TARGET, "wasm32-wasip2", "release", "guest.wasm")
TOOLS = os.path.join(TARGET, "bench-tools")
WASMTIME = os.path.join(TOOLS, "bin", "wasmtime")
ROUNDS = int(os.environ.get("ROUNDS", "3"))
DURATION = int(os.environ.get("DURATION", "5"))
APPS = int(os.environ.get("APPS", "1000"))
RESTART_APPS = 100
BIG_GUEST = os.path.join(TARGET, "wasm32-wasip2", "release", "big_guest.wasm")
CONCURRENCY = [1, 64, 256]
SECTIONS = ["throughput", "micro", "cold", "memory", "echo", "foreign"]
ONLY = [x.strip() for x in os.environ.get("BENCH_ONLY", "").split(",") if x.strip()]
NO_BUILD = os.environ.get("NO_BUILD", "") not in ("", "0")
FOREIGN_APPS = int(os.environ.get("FOREIGN_APPS", "50"))
# (key, label, .wasm under target/wasm32-wasip2/release, how it is built)
FOREIGN = [
    ("python", "Python", "python_guest.wasm", "componentize-py 0.25.1, wasi:http 0.2"),
    ("javascript", "JavaScript", "javascript_guest.wasm", "componentize-js 0.23.0 (StarlingMonkey), wasi:http 0.2"),
    ("p3", "Rust, WASI 0.3", "p3_guest.wasm", "Rust exporting `wasi:http/handler@0.3.0`"),
]
FOREIGN_C = 16
# The memory reset the host used for every component before it picked one
# per component (README: Guest memory): scan for dirty pages, whatever the
# image. The default (`auto`) resets large images such as Python's by copy.
SCAN_RESET = ["--memory-reset", "scan"]
P3_C = 64

procs = []


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def run(cmd, **kw):
    log("+ " + " ".join(cmd))
    return subprocess.run(cmd, check=True, **kw)


def ensure_tools():
    if not shutil.which("wrk"):
        log("wrk is missing; installing it from Debian")
        try:
            run(["apt-get", "install", "-y", "-qq", "wrk"], stdout=subprocess.DEVNULL)
        except Exception:
            run(["apt-get", "update", "-qq"], stdout=subprocess.DEVNULL)
            run(["apt-get", "install", "-y", "-qq", "wrk"], stdout=subprocess.DEVNULL)
    if not os.path.exists(WASMTIME):
        log("wasmtime 48.0.8 is missing; installing it into target/bench-tools (takes a while)")
        try:
            run(["cargo", "install", "wasmtime-cli", "--version", "48.0.8", "--locked", "--root", TOOLS])
        except Exception as err:
            log(f"NOTE: could not install wasmtime-cli 48.0.8 ({err}); the wasmtime baseline is skipped")


def build():
    run(["cargo", "build", "--release", "-p", "host", "-p", "bench"])
    run(["cargo", "build", "--release", "--target", "wasm32-wasip2", "-p", "guest", "-p", "big-guest"])


def server_env(extra=None):
    env = {k: v for k, v in os.environ.items() if k not in ("RUST_BACKTRACE", "RUST_LIB_BACKTRACE")}
    return {**env, **(extra or {})}


def start(cmd, env=None):
    """Start a server, wait for `Serving HTTP on http://ADDR/`, return (proc, addr)."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                         env=server_env(env), start_new_session=True)
    procs.append(p)
    deadline = time.time() + 120
    while time.time() < deadline:
        line = p.stdout.readline()
        if not line:
            raise RuntimeError(f"{cmd[0]} exited before serving")
        m = re.search(r"Serving HTTP on http://([^/\s]+)/?", line)
        if m:
            return p, m.group(1)
        if "Admin API on http://" in line:
            p.admin = line.split("http://")[1].strip().rstrip("/")
    raise RuntimeError(f"{cmd[0]} did not start")


def start_wasmtime(wasm, extra):
    """Start `wasmtime serve -Scli` on a free port; return (proc, addr).
    It is not waited for: call wait_http."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    p = subprocess.Popen([WASMTIME, "serve", "-Scli", *extra, "--addr", f"127.0.0.1:{port}", wasm],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                         env=server_env())
    procs.append(p)
    return p, f"127.0.0.1:{port}"


def stop(p):
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def wait_http(url, timeout=60, host=None):
    deadline = time.time() + timeout
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(request, timeout=2) as r:
                if r.status == 200:
                    return
        except Exception:
            time.sleep(0.005)
    raise RuntimeError(f"{url} never answered 200")


def cpu_seconds(pid):
    """User + system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(addr, conns, pid):
    cpu0 = cpu_seconds(pid)
    out = subprocess.run(["wrk", "-t1", f"-c{conns}", f"-d{DURATION}s", "--latency", f"http://{addr}/"],
                         check=True, capture_output=True, text=True).stdout
    cpu = cpu_seconds(pid) - cpu0
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    def pct(p):
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)", out, re.M)
        v, unit = float(m.group(1)), m.group(2)
        return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v
    return {"rps": rps, "p50": pct(50), "p99": pct(99), "errors": int(non2xx.group(1)) if non2xx else 0,
            "cpu_us": cpu * 1e6 / max(requests, 1)}


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def machine():
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, Linux {platform.release()}"


def throughput(state_dir):
    servers = {}  # name -> (addr, pid)
    p, addr = start([NATIVE, "127.0.0.1:0"])
    servers["native"] = (addr, p.pid)
    for name, extra in [("host", []), ("host-reuse", ["--instance-reuse", "128"])]:
        p, addr = start([HOST, "serve", GUEST, "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
                         "--state-dir", os.path.join(state_dir, name), *extra], env={"RUST_LOG": "warn"})
        servers[name] = (addr, p.pid)
    if os.path.exists(WASMTIME):
        # `wasmtime` = fresh instance per request (what our host does);
        # `wasmtime-reuse` = up to 128 requests per instance (the baseline
        # for opt-in instance reuse).
        for name, extra in [("wasmtime", []), ("wasmtime-reuse", ["--max-instance-reuse-count", "128"])]:
            p, addr = start_wasmtime(GUEST, extra)
            servers[name] = (addr, p.pid)
    for addr, _ in servers.values():
        wait_http(f"http://{addr}/")
    results = {(s, c): [] for s in servers for c in CONCURRENCY}
    for r in range(ROUNDS):
        for c in CONCURRENCY:
            for s, (addr, pid) in servers.items():
                res = wrk(addr, c, pid)
                log(f"round {r + 1} c={c} {s}: {res['rps']:.0f} req/s p50 {res['p50']:.3f} ms "
                    f"p99 {res['p99']:.3f} ms cpu {res['cpu_us']:.1f} us/req")
                results[(s, c)].append(res)
    for p in list(procs):
        stop(p)
        procs.remove(p)
    table = {}
    for (s, c), runs in results.items():
        table[(s, c)] = {k: statistics.median(r[k] for r in runs) for k in ("rps", "p50", "p99", "cpu_us")}
        table[(s, c)]["errors"] = sum(r["errors"] for r in runs)
    return list(servers), table


def microbench():
    """The criterion per-request microbench: {name: (value, unit)}."""
    out = run(["cargo", "bench", "-p", "host", "--bench", "per_request", "--",
               "--warm-up-time", "2", "--measurement-time", "5"],
              capture_output=True, text=True).stdout
    found = {}
    for name, value, unit in re.findall(r"per_request/(\w+)\s+time:\s+\[\S+ \S+ ([\d.]+) (\S+) ", out):
        found[name] = (float(value), unit)
    return found


def variant(wasm, i):
    """`wasm` plus a custom section naming `i`: the same app, another digest,
    so every copy is compiled and cached on its own."""
    def leb(n):
        out = bytearray()
        while True:
            byte, n = n & 0x7F, n >> 7
            out.append(byte | (0x80 if n else 0))
            if not n:
                return bytes(out)
    name = b"bench-variant"
    payload = leb(len(name)) + name + str(i).encode()
    return wasm + b"\x00" + leb(len(payload)) + payload


def deploy_api(admin, name, wasm, settings):
    boundary = "benchboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"component\"; filename=\"a.wasm\"\r\n\r\n").encode() \
        + wasm + (f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"settings\"\r\n\r\n"
                  f"{json.dumps(settings)}\r\n--{boundary}--\r\n").encode()
    req = urllib.request.Request(f"http://{admin}/v1/apps/{name}/versions", data=body, method="POST",
                                 headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    urllib.request.urlopen(req).read()


def cold_start(state_dir):
    """Deploy -> first 200 for the hello guest and the large (several-MB,
    release) guest; restart with RESTART_APPS distinct deployed apps ->
    ready and every app answering, from the precompiled cache."""
    serve = [HOST, "serve", "--no-default-app", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
             "--state-dir", state_dir]
    p, addr = start(serve, env={"RUST_LOG": "warn"})
    out = {}
    for name, wasm in [("hello", GUEST), ("large", BIG_GUEST)]:
        t0 = time.perf_counter()
        # A host route at `/`, so the guest sees `/` (apps see the full path).
        subprocess.run([HOST, "deploy", wasm, "--name", name, "--route", "/", "--host", f"{name}.bench",
                        "--server", f"http://{p.admin}"], check=True, capture_output=True)
        wait_http(f"http://{addr}/", host=f"{name}.bench")
        out[name] = (time.perf_counter() - t0) * 1000, os.path.getsize(wasm)
    with open(GUEST, "rb") as f:
        wasm = f.read()
    t0 = time.perf_counter()
    for i in range(RESTART_APPS - 2):
        deploy_api(p.admin, f"app{i}", variant(wasm, i), {"route": "/", "host": f"app{i}.bench"})
    out["deploy_many"] = time.perf_counter() - t0
    stop(p)
    procs.remove(p)
    hosts = ["hello.bench", "large.bench"] + [f"app{i}.bench" for i in range(RESTART_APPS - 2)]
    t0 = time.perf_counter()
    p, addr = start(serve, env={"RUST_LOG": "warn"})
    wait_http(f"http://{p.admin}/readyz")
    out["ready"] = (time.perf_counter() - t0) * 1000
    for h in hosts:
        wait_http(f"http://{addr}/", host=h)
    out["all"] = (time.perf_counter() - t0) * 1000
    stop(p)
    procs.remove(p)
    return out


def memory(state_dir):
    p, addr = start([HOST, "serve", GUEST, "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
                     "--state-dir", state_dir], env={"RUST_LOG": "warn"})
    wait_http(f"http://{addr}/")
    idle = rss_kib(p.pid)
    with open(GUEST, "rb") as f:
        wasm = f.read()
    t0 = time.perf_counter()
    for i in range(APPS):
        deploy_api(p.admin, f"app{i}", wasm, {"route": "/", "host": f"app{i}.bench"})
    deploy_s = time.perf_counter() - t0
    answered = 0
    for i in range(APPS):
        try:
            req = urllib.request.Request(f"http://{addr}/", headers={"Host": f"app{i}.bench"})
            with urllib.request.urlopen(req) as r:
                answered += r.status == 200
        except Exception:
            pass
    many = rss_kib(p.pid)
    stop(p)
    procs.remove(p)
    return idle, many, answered, deploy_s


def echo_throughput(state_dir):
    """Seconds to stream 64 MiB through /echo, host vs native (curl)."""
    payload = os.path.join(state_dir, "payload.bin")
    with open(payload, "wb") as f:
        f.write(os.urandom(64 * 2**20))
    res = {}
    for name, cmd in [("native", [NATIVE, "127.0.0.1:0"]),
                      ("host", [HOST, "serve", GUEST, "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
                                "--state-dir", os.path.join(state_dir, "echo")])]:
        p, addr = start(cmd, env={"RUST_LOG": "warn"})
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            subprocess.run(["curl", "-s", "-o", "/dev/null", "-H", "Expect:", "-H", "Transfer-Encoding: chunked",
                            "--data-binary", f"@{payload}", f"http://{addr}/echo"], check=True)
            times.append(time.perf_counter() - t0)
        res[name] = 64 / statistics.median(times)
        stop(p)
        procs.remove(p)
    return res


def foreign_components():
    """The FOREIGN components that are built: [(key, label, path, how)]."""
    found = []
    for key, label, name, how in FOREIGN:
        path = os.path.join(TARGET, "wasm32-wasip2", "release", name)
        if os.path.exists(path):
            found.append((key, label, path, how))
        else:
            log(f"NOTE: {path} is missing (make build-guests builds it); its rows are skipped")
    return found


# Servers of the foreign section: name -> (mode, what the table calls it).
FOREIGN_SERVERS = {
    "host": ("fresh", "host"),
    "wasmtime": ("fresh", "wasmtime serve `--max-instance-reuse-count 1`"),
    "host-scan": ("fresh", "host `--memory-reset scan` (the default before `auto`)"),
    "host-reuse": ("reuse", "host `--instance-reuse 128`"),
    "host-shared": ("reuse", "host `--instance-reuse 128 --instance-concurrency 16`"),
    "wasmtime-reuse": ("reuse", "wasmtime serve, defaults (≤128 requests, 16 at once per instance)"),
}


def foreign_throughput(state_dir, comps):
    """wrk against each component on our host and on wasmtime serve, a
    fresh instance per request, at FOREIGN_C; the WASI 0.3 one also at P3_C,
    fresh and reusing instances. Returns the runs [(key, server, c)] in
    table order and {run: medians}."""
    runs = []
    for key, *_ in comps:
        runs += [(key, "host", FOREIGN_C), (key, "wasmtime", FOREIGN_C)]
        if key == "python":
            runs.append((key, "host-scan", FOREIGN_C))
    if any(key == "p3" for key, *_ in comps):
        runs += [("p3", s, P3_C) for s in ("host", "wasmtime", "host-reuse", "host-shared", "wasmtime-reuse")]
    if not os.path.exists(WASMTIME):
        runs = [run for run in runs if not run[1].startswith("wasmtime")]
    paths = {key: path for key, _, path, _ in comps}
    servers = {}  # (key, server) -> (addr, pid)
    for key, server, _ in runs:
        if (key, server) in servers:
            continue
        if server.startswith("host"):
            extra = {"host-reuse": ["--instance-reuse", "128"],
                     "host-shared": ["--instance-reuse", "128", "--instance-concurrency", "16"],
                     "host-scan": SCAN_RESET}.get(server, [])
            p, addr = start([HOST, "serve", paths[key], "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
                             "--state-dir", os.path.join(state_dir, f"{key}-{server}"), *extra],
                            env={"RUST_LOG": "warn"})
        else:
            # wasmtime serve 48 never reuses a WASI 0.2 instance but reuses a
            # WASI 0.3 one by default (128 requests, 16 at once); a count of
            # 1 makes every request fresh whatever the world.
            p, addr = start_wasmtime(paths[key], [] if server == "wasmtime-reuse"
                                     else ["--max-instance-reuse-count", "1"])
        servers[(key, server)] = (addr, p.pid)
    # Python and JavaScript compile for seconds each, all at once here.
    for addr, _ in servers.values():
        wait_http(f"http://{addr}/", timeout=600)
    results = {run: [] for run in runs}
    for r in range(ROUNDS):
        for key, server, c in runs:
            addr, pid = servers[(key, server)]
            res = wrk(addr, c, pid)
            log(f"round {r + 1} {key} c={c} {server}: {res['rps']:.0f} req/s p50 {res['p50']:.3f} ms "
                f"p99 {res['p99']:.3f} ms cpu {res['cpu_us']:.1f} us/req")
            results[(key, server, c)].append(res)
    for p in list(procs):
        stop(p)
        procs.remove(p)
    table = {}
    for run, rs in results.items():
        table[run] = {k: statistics.median(r[k] for r in rs) for k in ("rps", "p50", "p99", "cpu_us")}
        table[run]["errors"] = sum(r["errors"] for r in rs)
    return runs, table


def foreign_cold(state_dir, comps):
    """Our host, one per component: deploy -> first 200 (compile), then
    SIGTERM, start again on the same state dir -> first 200 (from the
    precompiled cache). {key: (deploy ms, restart ms)}"""
    out = {}
    for key, _, path, _ in comps:
        serve = [HOST, "serve", "--no-default-app", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
                 "--state-dir", os.path.join(state_dir, key)]
        with open(path, "rb") as f:
            wasm = f.read()
        p, addr = start(serve, env={"RUST_LOG": "warn"})
        t0 = time.perf_counter()
        deploy_api(p.admin, key, wasm, {"route": "/", "host": f"{key}.bench"})
        wait_http(f"http://{addr}/", timeout=300, host=f"{key}.bench")
        deploy_ms = (time.perf_counter() - t0) * 1000
        stop(p)
        procs.remove(p)
        t0 = time.perf_counter()
        p, addr = start(serve, env={"RUST_LOG": "warn"})
        wait_http(f"http://{addr}/", timeout=300, host=f"{key}.bench")
        out[key] = deploy_ms, (time.perf_counter() - t0) * 1000
        stop(p)
        procs.remove(p)
    return out


def foreign_memory(state_dir, path):
    """RSS of one host with FOREIGN_APPS Python apps, each answering 200
    once. They are the same component under FOREIGN_APPS names (one digest,
    compiled once and shared): a Python compile takes seconds, and what is
    measured is what each further app costs. The one-app baseline is taken
    after a restart (code from the cache): just after a compile, RSS still
    holds the compiler's memory."""
    serve = [HOST, "serve", "--no-default-app", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
             "--state-dir", state_dir]
    p, addr = start(serve, env={"RUST_LOG": "warn"})
    wait_http(f"http://{p.admin}/readyz")
    out = {"idle": rss_kib(p.pid)}
    with open(path, "rb") as f:
        wasm = f.read()
    t0 = time.perf_counter()
    deploy_api(p.admin, "py0", wasm, {"route": "/", "host": "py0.bench"})
    wait_http(f"http://{addr}/", timeout=300, host="py0.bench")
    out["first_s"] = time.perf_counter() - t0
    out["compiled"] = rss_kib(p.pid)
    stop(p)
    procs.remove(p)
    p, addr = start(serve, env={"RUST_LOG": "warn"})
    wait_http(f"http://{addr}/", timeout=300, host="py0.bench")
    out["one"] = rss_kib(p.pid)
    t0 = time.perf_counter()
    for i in range(1, FOREIGN_APPS):
        deploy_api(p.admin, f"py{i}", wasm, {"route": "/", "host": f"py{i}.bench"})
    out["rest_s"] = time.perf_counter() - t0
    answered = 0
    for i in range(FOREIGN_APPS):
        try:
            req = urllib.request.Request(f"http://{addr}/", headers={"Host": f"py{i}.bench"})
            with urllib.request.urlopen(req, timeout=60) as r:
                answered += r.status == 200
        except Exception:
            pass
    out["answered"] = answered
    out["many"] = rss_kib(p.pid)
    stop(p)
    procs.remove(p)
    return out


def foreign(state_dir):
    comps = foreign_components()
    runs, table = foreign_throughput(os.path.join(state_dir, "tp"), comps)
    cold = foreign_cold(os.path.join(state_dir, "cold"), comps)
    python = [path for key, _, path, _ in comps if key == "python"]
    mem = foreign_memory(os.path.join(state_dir, "mem"), python[0]) if python else None
    return {"comps": comps, "runs": runs, "table": table, "cold": cold, "mem": mem}


def foreign_report(w, f):
    """The `Components from other toolchains` section, through `w`."""
    w("## Components from other toolchains\n")
    if not f["comps"]:
        w("None built (`make build-guests`).\n")
        return
    labels = {key: label for key, label, _, _ in f["comps"]}
    built = "; ".join(f"{label}: {how}, {os.path.getsize(path) / 2**20:.1f} MiB"
                      for _, label, path, how in f["comps"])
    w(f"Built by `make build-guests` ({built}). Each answers `GET /` with one line of text. Each is served by "
      f"our host and by `wasmtime serve -Scli` 48.0.8 in the same run: wrk -t1, {DURATION} s per run, servers "
      f"interleaved, median of {ROUNDS} rounds. Fresh = a new instance per request (our default; wasmtime serve "
      "with `--max-instance-reuse-count 1`); reuse = our `--instance-reuse 128` against wasmtime serve's "
      "defaults, which reuse a WASI 0.3 instance. CPU = the server process's user+system time per request.\n")
    w("| component | mode | server | c | req/s | p50 ms | p99 ms | CPU µs/req | vs wasmtime |")
    w("|---|---|---|---|---|---|---|---|---|")
    table = f["table"]
    for key, server, c in f["runs"]:
        r = table[(key, server, c)]
        mode, name = FOREIGN_SERVERS[server]
        base = (key, {"host": "wasmtime", "host-scan": "wasmtime", "host-reuse": "wasmtime-reuse",
                      "host-shared": "wasmtime-reuse"}.get(server, server), c)
        vs_wt = f"{r['rps'] / table[base]['rps']:.2f}x" if base in table else "n/a"
        w(f"| {labels[key]} | {mode} | {name} | {c} | {r['rps']:.0f} | {r['p50']:.3f} | {r['p99']:.3f} | "
          f"{r['cpu_us']:.1f} | {vs_wt} |")
    errors = [f"{labels[key]} {server} c={c}: {table[(key, server, c)]['errors']}"
              for key, server, c in f["runs"] if table[(key, server, c)]["errors"]]
    w(f"\nNon-2xx responses: {'; '.join(errors) if errors else 'none'}.\n")
    w("Our host only, a fresh state directory per component:\n")
    w("| component | size | deploy → first 200 (compile) | restart (SIGTERM, same state dir) → first 200 (cache) |")
    w("|---|---|---|---|")
    for key, label, path, _ in f["comps"]:
        deploy_ms, restart_ms = f["cold"][key]
        w(f"| {label} | {os.path.getsize(path) / 2**20:.1f} MiB | {deploy_ms:.0f} ms | {restart_ms:.0f} ms |")
    m = f["mem"]
    if m:
        per_app = (m["many"] - m["one"]) / max(FOREIGN_APPS - 1, 1)
        w(f"\nRSS with {FOREIGN_APPS} Python apps on one host: {m['many'] / 1024:.1f} MiB ({m['answered']} of "
          f"{FOREIGN_APPS} answered 200 once). With one app (restarted, its code from the cache, answered once): "
          f"{m['one'] / 1024:.1f} MiB, so {per_app:.0f} KiB per further app; idle with no app: "
          f"{m['idle'] / 1024:.1f} MiB; just after compiling the first: {m['compiled'] / 1024:.1f} MiB. Deploying "
          f"the first took {m['first_s']:.1f} s (compile), the other {FOREIGN_APPS - 1} {m['rest_s']:.1f} s. The "
          f"{FOREIGN_APPS} are the same component under as many names (one digest, compiled once and shared; a "
          "Python compile takes seconds here): this is the memory each further app costs, not that of as many "
          "distinct Python programs.")
    w("")


def selected(section):
    return not ONLY or section in ONLY


def main():
    unknown = [x for x in ONLY if x not in SECTIONS]
    if unknown:
        sys.exit(f"BENCH_ONLY: unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    command = "make bench" + "".join(f" {k}={os.environ[k]}" for k in
                                     ("ROUNDS", "DURATION", "APPS", "FOREIGN_APPS", "BENCH_ONLY") if k in os.environ)
    ensure_tools()
    if NO_BUILD:
        for path in (HOST, NATIVE, GUEST, BIG_GUEST):
            if not os.path.exists(path):
                log(f"NOTE: NO_BUILD=1 and {path} is missing: the sections that use it will fail")
    else:
        build()
    micro = microbench() if selected("micro") else None
    with tempfile.TemporaryDirectory(prefix="host-bench-") as tmp:
        servers, table = throughput(os.path.join(tmp, "tp")) if selected("throughput") else (None, None)
        cold = cold_start(os.path.join(tmp, "cold")) if selected("cold") else None
        mem = memory(os.path.join(tmp, "mem")) if selected("memory") else None
        echo = echo_throughput(tmp) if selected("echo") else None
        other = foreign(os.path.join(tmp, "foreign")) if selected("foreign") else None

    # Each server is compared with wasmtime serve in the same mode.
    baseline = {"host": "wasmtime", "host-reuse": "wasmtime-reuse", "wasmtime-reuse": "wasmtime-reuse"}
    lines = []
    w = lines.append
    w("# Benchmarks\n")
    w(f"Produced by `{command}` on {time.strftime('%Y-%m-%d')}; machine: {machine()}.")
    if table:
        w(f"wrk -t1, {DURATION} s per run, concurrency {', '.join(map(str, CONCURRENCY))}, servers interleaved, "
          f"median of {ROUNDS} rounds. Hello = `GET /` answering 14 bytes. Host runs with `RUST_LOG=warn` "
          "(no per-request access log); `host` is a fresh instance per request, `host-reuse` runs with "
          "`--instance-reuse 128`. No server has `RUST_BACKTRACE` set. CPU = the server process's user+system "
          "time per request (wrk runs on the same 2 cores).\n")
    else:
        w("Host runs with `RUST_LOG=warn`; no server has `RUST_BACKTRACE` set; wrk runs on the same cores.\n")
    if table:
        w("## Throughput and latency\n")
        w("| concurrency | server | req/s | p50 ms | p99 ms | non-2xx | CPU µs/req | vs native | vs wasmtime (same mode) |")
        w("|---|---|---|---|---|---|---|---|---|")
        for c in CONCURRENCY:
            for s in servers:
                r = table[(s, c)]
                vs_native = r["rps"] / table[("native", c)]["rps"]
                base = baseline.get(s, "wasmtime")
                vs_wt = f"{r['rps'] / table[(base, c)]['rps']:.2f}x" if (base, c) in table else "n/a"
                w(f"| {c} | {s} | {r['rps']:.0f} | {r['p50']:.3f} | {r['p99']:.3f} | {r['errors']} | "
                  f"{r['cpu_us']:.1f} | {vs_native:.1%} | {vs_wt} |")
        w("")
    if micro is not None:
        w("## Per request, in process (criterion)\n")
        w("`cargo bench -p host --bench per_request`: one request through `ServedVersion::handle`, body read "
          "to the end, no sockets.\n")
        for name, (value, unit) in micro.items():
            w(f"- {name.replace('_', ' ')}: {value} {unit}")
        w("")
    if cold:
        w("## Cold start\n")
        w("| what | component size | time |")
        w("|---|---|---|")
        w(f"| deploy the hello guest → first 200 (compile) | {cold['hello'][1] / 1024:.0f} KiB | {cold['hello'][0]:.0f} ms |")
        w(f"| deploy the large guest → first 200 (compile) | {cold['large'][1] / 2**20:.1f} MiB | {cold['large'][0]:.0f} ms |")
        w(f"| restart with {RESTART_APPS} deployed apps (distinct code) → ready | | {cold['ready']:.0f} ms |")
        w(f"| restart with {RESTART_APPS} deployed apps → every one answered 200 | | {cold['all']:.0f} ms |")
        w(f"\n(Deploying the other {RESTART_APPS - 2} apps took {cold['deploy_many']:.1f} s, each compiled.)\n")
    if mem:
        idle, many, answered, deploy_s = mem
        w("## Memory\n")
        w(f"- idle RSS, default guest: {idle / 1024:.1f} MiB")
        w(f"- RSS with {APPS} deployed hello apps: {many / 1024:.1f} MiB; {answered} of {APPS} answered; deploying them took {deploy_s:.1f} s")
        w("")
    if echo:
        w("## 64 MiB streamed echo\n")
        w(f"- native: {echo['native']:.0f} MiB/s; host: {echo['host']:.0f} MiB/s ({echo['host'] / echo['native']:.0%} of native)")
        w("")
    if other:
        foreign_report(w, other)
    report = "\n".join(lines)
    print(report)
    if ONLY:
        log(f"BENCH_ONLY={','.join(ONLY)}: a partial run, so BENCHMARKS.md is left as it is (the report is above)")
    else:
        write_report(os.path.join(ROOT, "BENCHMARKS.md"), report)


BEGIN, END = "<!-- bench:begin (written by make bench) -->", "<!-- bench:end -->"


def write_report(path, report):
    """Replace the measured part of `path` (between BEGIN and END), keeping
    what is written around it; a file without the markers is replaced."""
    try:
        with open(path) as f:
            old = f.read()
    except FileNotFoundError:
        old = ""
    block = f"{BEGIN}\n{report.rstrip()}\n{END}"
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + block + tail
    else:
        text = block + "\n"
    with open(path, "w") as f:
        f.write(text)
    log(f"wrote the measured part of {path}; the analysis after it is unchanged: review and commit")


if __name__ == "__main__":
    try:
        main()
    finally:
        for p in procs:
            stop(p)
