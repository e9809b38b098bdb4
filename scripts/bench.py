#!/usr/bin/env python3
"""`make bench`: measure our host against its baselines in one run.

Servers, all on loopback, all serving the same 14-byte hello:
  native    a plain hyper 1 server (bench/, `native-hello`)
  host      our host with the default guest (fresh instance per request)
  wasmtime  `wasmtime serve -Scli` 48.0.8 on the same .wasm
  wasmtime-reuse  the same with `--max-instance-reuse-count 128`

Each is driven by wrk at concurrency 1, 64 and 256, interleaved, for
ROUNDS rounds; the median of the rounds is reported with ratios to native
and to wasmtime serve. Also: cold start (deploy -> first 200, restart ->
first 200 from the cache), idle RSS and RSS with many deployed apps, and a
64 MiB streamed echo against native. Results go to BENCHMARKS.md.

Everything it starts is stopped before it exits; it only talks to
127.0.0.1. Environment: ROUNDS (3), DURATION seconds per run (5),
APPS (1000) for the many-apps RSS measurement.
"""

import json
import os
import platform
import re
import shutil
import signal
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
CONCURRENCY = [1, 64, 256]

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
    run(["cargo", "build", "--release", "--target", "wasm32-wasip2", "-p", "guest"])


def start(cmd, env=None):
    """Start a server, wait for `Serving HTTP on http://ADDR/`, return (proc, addr)."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                         env={**os.environ, **(env or {})}, start_new_session=True)
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


def wrk(addr, conns):
    out = subprocess.run(["wrk", "-t1", f"-c{conns}", f"-d{DURATION}s", "--latency", f"http://{addr}/"],
                         check=True, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    def pct(p):
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)", out, re.M)
        v, unit = float(m.group(1)), m.group(2)
        return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v
    return {"rps": rps, "p50": pct(50), "p99": pct(99), "errors": int(non2xx.group(1)) if non2xx else 0}


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
    servers = {}
    p, addr = start([NATIVE, "127.0.0.1:0"])
    servers["native"] = addr
    p, addr = start([HOST, "serve", GUEST, "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
                     "--state-dir", state_dir], env={"RUST_LOG": "warn"})
    servers["host"] = addr
    if os.path.exists(WASMTIME):
        # `wasmtime` = fresh instance per request (what our host does);
        # `wasmtime-reuse` = up to 128 requests per instance (the baseline
        # for opt-in instance reuse).
        for name, extra in [("wasmtime", []), ("wasmtime-reuse", ["--max-instance-reuse-count", "128"])]:
            sock = __import__("socket").socket()
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
            sock.close()
            p = subprocess.Popen([WASMTIME, "serve", "-Scli", *extra, "--addr", f"127.0.0.1:{port}", GUEST],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            procs.append(p)
            servers[name] = f"127.0.0.1:{port}"
    for addr in servers.values():
        wait_http(f"http://{addr}/")
    results = {(s, c): [] for s in servers for c in CONCURRENCY}
    for r in range(ROUNDS):
        for c in CONCURRENCY:
            for s, addr in servers.items():
                res = wrk(addr, c)
                log(f"round {r + 1} c={c} {s}: {res['rps']:.0f} req/s p50 {res['p50']:.3f} ms p99 {res['p99']:.3f} ms")
                results[(s, c)].append(res)
    for p in list(procs):
        stop(p)
        procs.remove(p)
    table = {}
    for (s, c), runs in results.items():
        table[(s, c)] = {k: statistics.median(r[k] for r in runs) for k in ("rps", "p50", "p99")}
        table[(s, c)]["errors"] = sum(r["errors"] for r in runs)
    return servers, table


def cold_start(state_dir):
    """Deploy -> first 200 for the hello guest and a large (debug-build) guest;
    restart -> first 200 from the precompiled cache."""
    run(["cargo", "build", "--target", "wasm32-wasip2", "-p", "guest"])
    large = os.path.join(TARGET, "wasm32-wasip2", "debug", "guest.wasm")
    p, addr = start([HOST, "serve", "--no-default-app", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
                     "--state-dir", state_dir], env={"RUST_LOG": "warn"})
    out = {}
    for name, wasm in [("hello", GUEST), ("large", large)]:
        t0 = time.perf_counter()
        # A host route at `/`, so the guest sees `/` (apps see the full path).
        subprocess.run([HOST, "deploy", wasm, "--name", name, "--route", "/", "--host", f"{name}.bench",
                        "--server", f"http://{p.admin}"], check=True, capture_output=True)
        wait_http(f"http://{addr}/", host=f"{name}.bench")
        out[name] = (time.perf_counter() - t0) * 1000, os.path.getsize(wasm)
    stop(p)
    procs.remove(p)
    t0 = time.perf_counter()
    p, addr = start([HOST, "serve", "--no-default-app", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
                     "--state-dir", state_dir], env={"RUST_LOG": "warn"})
    wait_http(f"http://{addr}/", host="hello.bench")
    out["restart"] = (time.perf_counter() - t0) * 1000, 0
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
    boundary = "benchboundary"
    t0 = time.perf_counter()
    for i in range(APPS):
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"component\"; filename=\"a.wasm\"\r\n\r\n").encode() + wasm + \
               (f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"settings\"\r\n\r\n"
                f"{json.dumps({'route': '/', 'host': f'app{i}.bench'})}\r\n--{boundary}--\r\n").encode()
        req = urllib.request.Request(f"http://{p.admin}/v1/apps/app{i}/versions", data=body, method="POST",
                                     headers={"content-type": f"multipart/form-data; boundary={boundary}"})
        urllib.request.urlopen(req).read()
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


def main():
    command = "make bench" + "".join(f" {k}={os.environ[k]}" for k in ("ROUNDS", "DURATION", "APPS") if k in os.environ)
    ensure_tools()
    build()
    with tempfile.TemporaryDirectory(prefix="host-bench-") as tmp:
        servers, table = throughput(os.path.join(tmp, "tp"))
        cold = cold_start(os.path.join(tmp, "cold"))
        idle, many, answered, deploy_s = memory(os.path.join(tmp, "mem"))
        echo = echo_throughput(tmp)

    lines = []
    w = lines.append
    w("# Benchmarks\n")
    w(f"Produced by `{command}` on {time.strftime('%Y-%m-%d')}; machine: {machine()}.")
    w(f"wrk -t1, {DURATION} s per run, concurrency {', '.join(map(str, CONCURRENCY))}, servers interleaved, "
      f"median of {ROUNDS} rounds. Hello = `GET /` answering 14 bytes. Host runs with `RUST_LOG=warn` "
      "(no per-request access log), a fresh instance per request.\n")
    w("## Throughput and latency\n")
    w("| concurrency | server | req/s | p50 ms | p99 ms | non-2xx | vs native | vs wasmtime serve |")
    w("|---|---|---|---|---|---|---|---|")
    for c in CONCURRENCY:
        for s in servers:
            r = table[(s, c)]
            vs_native = r["rps"] / table[("native", c)]["rps"]
            vs_wt = f"{r['rps'] / table[('wasmtime', c)]['rps']:.2f}x" if ("wasmtime", c) in table else "n/a"
            w(f"| {c} | {s} | {r['rps']:.0f} | {r['p50']:.3f} | {r['p99']:.3f} | {r['errors']} | {vs_native:.1%} | {vs_wt} |")
    w("")
    w("## Cold start\n")
    w("| what | component size | time to first 200 |")
    w("|---|---|---|")
    w(f"| deploy the hello guest (compile) | {cold['hello'][1] / 1024:.0f} KiB | {cold['hello'][0]:.0f} ms |")
    w(f"| deploy a large guest (debug build, compile) | {cold['large'][1] / 2**20:.1f} MiB | {cold['large'][0]:.0f} ms |")
    w(f"| restart with both deployed (precompiled cache) | | {cold['restart'][0]:.0f} ms |")
    w("")
    w("## Memory\n")
    w(f"- idle RSS, default guest: {idle / 1024:.1f} MiB")
    w(f"- RSS with {APPS} deployed hello apps: {many / 1024:.1f} MiB; {answered} of {APPS} answered; deploying them took {deploy_s:.1f} s")
    w("")
    w("## 64 MiB streamed echo\n")
    w(f"- native: {echo['native']:.0f} MiB/s; host: {echo['host']:.0f} MiB/s ({echo['host'] / echo['native']:.0%} of native)")
    w("")
    report = "\n".join(lines)
    print(report)
    with open(os.path.join(ROOT, "BENCHMARKS.md.new"), "w") as f:
        f.write(report + "\n")
    log("wrote BENCHMARKS.md.new: copy its tables into BENCHMARKS.md, keeping the analysis sections")


if __name__ == "__main__":
    try:
        main()
    finally:
        for p in procs:
            stop(p)
