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
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
            sock.close()
            p = subprocess.Popen([WASMTIME, "serve", "-Scli", *extra, "--addr", f"127.0.0.1:{port}", GUEST],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                                 env=server_env())
            procs.append(p)
            servers[name] = (f"127.0.0.1:{port}", p.pid)
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


def main():
    command = "make bench" + "".join(f" {k}={os.environ[k]}" for k in ("ROUNDS", "DURATION", "APPS") if k in os.environ)
    ensure_tools()
    build()
    micro = microbench()
    with tempfile.TemporaryDirectory(prefix="host-bench-") as tmp:
        servers, table = throughput(os.path.join(tmp, "tp"))
        cold = cold_start(os.path.join(tmp, "cold"))
        idle, many, answered, deploy_s = memory(os.path.join(tmp, "mem"))
        echo = echo_throughput(tmp)

    # Each server is compared with wasmtime serve in the same mode.
    baseline = {"host": "wasmtime", "host-reuse": "wasmtime-reuse", "wasmtime-reuse": "wasmtime-reuse"}
    lines = []
    w = lines.append
    w("# Benchmarks\n")
    w(f"Produced by `{command}` on {time.strftime('%Y-%m-%d')}; machine: {machine()}.")
    w(f"wrk -t1, {DURATION} s per run, concurrency {', '.join(map(str, CONCURRENCY))}, servers interleaved, "
      f"median of {ROUNDS} rounds. Hello = `GET /` answering 14 bytes. Host runs with `RUST_LOG=warn` "
      "(no per-request access log); `host` is a fresh instance per request, `host-reuse` runs with "
      "`--instance-reuse 128`. No server has `RUST_BACKTRACE` set. CPU = the server process's user+system "
      "time per request (wrk runs on the same 2 cores).\n")
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
    w("## Per request, in process (criterion)\n")
    w("`cargo bench -p host --bench per_request`: one request through `Deployment::handle`, body read "
      "to the end, no sockets.\n")
    for name, (value, unit) in micro.items():
        w(f"- {name.replace('_', ' ')}: {value} {unit}")
    w("")
    w("## Cold start\n")
    w("| what | component size | time |")
    w("|---|---|---|")
    w(f"| deploy the hello guest → first 200 (compile) | {cold['hello'][1] / 1024:.0f} KiB | {cold['hello'][0]:.0f} ms |")
    w(f"| deploy the large guest → first 200 (compile) | {cold['large'][1] / 2**20:.1f} MiB | {cold['large'][0]:.0f} ms |")
    w(f"| restart with {RESTART_APPS} deployed apps (distinct code) → ready | | {cold['ready']:.0f} ms |")
    w(f"| restart with {RESTART_APPS} deployed apps → every one answered 200 | | {cold['all']:.0f} ms |")
    w(f"\n(Deploying the other {RESTART_APPS - 2} apps took {cold['deploy_many']:.1f} s, each compiled.)\n")
    w("## Memory\n")
    w(f"- idle RSS, default guest: {idle / 1024:.1f} MiB")
    w(f"- RSS with {APPS} deployed hello apps: {many / 1024:.1f} MiB; {answered} of {APPS} answered; deploying them took {deploy_s:.1f} s")
    w("")
    w("## 64 MiB streamed echo\n")
    w(f"- native: {echo['native']:.0f} MiB/s; host: {echo['host']:.0f} MiB/s ({echo['host'] / echo['native']:.0%} of native)")
    w("")
    report = "\n".join(lines)
    print(report)
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
