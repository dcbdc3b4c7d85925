"""Serving reliability: the image's `serve` under a bounded soak, over real HTTP on 127.0.0.1.

    python bench/serve_soak.py [--requests 2000] [--concurrency 8] [--bad-every 5] [--kills 3]

1. Soak: REQUESTS requests from CONCURRENCY client threads, real JPEGs (imagewoof10 test split)
   with a bad request every BAD_EVERY (garbage, wrong type, truncated JPEG, deep JSON, the
   amplified 64-PNG request, a body over the payload limit, GET /invocations), while a model
   worker is killed KILLS times. Counted: good requests that did not get 200 (the target is 0),
   bad requests that did not get their JSON 4xx, the memory (PSS) of the whole process tree
   over time, and each kill's recovery time (until MMS has as many workers as before and /ping is
   200).
2. Work budget: the good-request p99 at concurrency 2, alone and while two clients send the
   costliest request the budget lets through (one 1-bit PNG just under MAX_REQUEST_PIXELS); and
   how long the amplified request (64 such PNGs in 0.4 MB) takes to be refused.
3. Attacks (issue 23): two copies of each hostile file at once while a good JPEG goes every 0.2 s
   and /ping every 0.1 s; per attack, the answer, how long it took, the CPU seconds the workers
   spent meanwhile (against a window of good traffic alone), the good requests' p99 and the /ping
   answers that were not 200. The costliest admitted requests run the same way.
"""
from __future__ import annotations

import argparse
import base64
import io
import itertools
import json
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import DATA, RESULTS, subset, write
import hostile_images as hostile

import psutil
import requests
from PIL import Image

from launch.local import programs
from image_classifier.serving import mms
from serve_latency import train_artifact

JPEG = {"Content-Type": "image/jpeg"}


def one_bit_png(side: int) -> bytes:
    buf = io.BytesIO()
    Image.new("1", (side, side)).save(buf, "PNG")
    return buf.getvalue()


def bad_requests(good: bytes) -> list[tuple[str, dict, bytes, int]]:
    """(method, headers, body, expected status)."""
    png = base64.b64encode(one_bit_png(6300)).decode()
    return [
        ("POST", JPEG, b"not an image", 400),
        ("POST", {"Content-Type": "text/plain"}, good, 415),
        ("POST", JPEG, good[: len(good) // 3], 400),
        ("POST", {"Content-Type": "application/json"}, ("[" * 50_000 + "]" * 50_000).encode(), 400),
        ("POST", {"Content-Type": "application/json"}, json.dumps({"instances": [png] * 64}).encode(), 413),
        ("POST", JPEG, b"\0" * (7 * 1024 * 1024), 413),
        ("GET", {}, b"", 405),
    ]


def tree_pss(pid: int) -> dict[str, float]:
    """MiB of proportional set size (shared pages split between the processes sharing them) of the
    whole tree, by kind: the front (`serve`), Java, MMS's Python processes."""
    out = {"serve": 0.0, "java": 0.0, "workers": 0.0}
    root = psutil.Process(pid)
    for p in [root] + root.children(recursive=True):
        try:
            pss = p.memory_full_info().pss / 2**20
            kind = "serve" if p.pid == pid else "java" if p.name() == "java" else "workers"
            out[kind] += pss
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    out["total"] = sum(out.values())
    return out


class Sampler(threading.Thread):
    def __init__(self, pid: int, every: float = 0.5):
        super().__init__(daemon=True)
        self.pid, self.every, self.samples, self.done = pid, every, [], threading.Event()

    def run(self):
        start = time.monotonic()
        while not self.done.is_set():
            self.samples.append((time.monotonic() - start, tree_pss(self.pid)))
            self.done.wait(self.every)


def soak(server: programs.Serve, goods: list[bytes], args) -> tuple[dict, list]:
    bads = bad_requests(goods[0])
    plan = [("bad", bads[i % len(bads)]) if i % args.bad_every == args.bad_every - 1
            else ("good", goods[i % len(goods)])
            for i in range(args.requests)]
    kill_at = {args.requests * (k + 1) // (args.kills + 1) for k in range(args.kills)}
    counter, lock = itertools.count(), threading.Lock()
    results, recoveries = [], []
    local_sessions = threading.local()

    def kill_and_time():
        _, before = mms.python_processes(server.process.pid)
        started = time.monotonic()
        before[0].kill()
        before[0].wait(10)  # gone, not just signalled: only then can its replacement be counted
        while time.monotonic() - started < 60:
            _, alive = mms.python_processes(server.process.pid)
            if len(alive) >= len(before) and requests.get(server.url + "/ping", timeout=5).status_code == 200:
                recoveries.append(time.monotonic() - started)
                return
            time.sleep(0.02)
        recoveries.append(None)

    def one(_):
        session = getattr(local_sessions, "s", None) or requests.Session()
        local_sessions.s = session
        with lock:
            i = next(counter)
        if i in kill_at:
            threading.Thread(target=kill_and_time, daemon=True).start()
        kind, item = plan[i]
        started = time.perf_counter()
        if kind == "good":
            r = session.post(server.url + "/invocations", data=item, headers=JPEG, timeout=120)
            ok = r.status_code == 200
        else:
            method, headers, body, expected = item
            r = session.request(method, server.url + "/invocations", data=body, headers=headers, timeout=120)
            ok = r.status_code == expected and r.headers.get("Content-Type", "").startswith("application/json")
        results.append((kind, ok, r.status_code, time.perf_counter() - started))

    sampler = Sampler(server.process.pid)
    sampler.start()
    started = time.monotonic()
    with ThreadPoolExecutor(args.concurrency) as pool:
        list(pool.map(one, range(args.requests)))
    seconds = time.monotonic() - started
    time.sleep(1)  # a last sample after the load
    sampler.done.set()
    sampler.join()
    good = [r for r in results if r[0] == "good"]
    bad = [r for r in results if r[0] == "bad"]
    latencies = sorted(r[3] for r in good if r[1])
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    mem = [s["total"] for _, s in sampler.samples]
    settled = mem[len(mem) // 5:] or mem  # after the first fifth: workers warm, Java's heap grown
    row = {"phase": "soak", "requests": len(results), "concurrency": args.concurrency, "seconds": seconds,
           "good": len(good), "good_errors": sum(not r[1] for r in good),
           "good_error_codes": sorted({r[2] for r in good if not r[1]}),
           "bad": len(bad), "bad_wrong_answers": sum(not r[1] for r in bad),
           "p50_ms": q[49] * 1e3, "p99_ms": q[98] * 1e3, "kills": len(kill_at),
           "recovery_s": recoveries, "recovery_max_s": max((r for r in recoveries if r is not None), default=None),
           "pss_first_mib": settled[0], "pss_last_mib": settled[-1], "pss_max_mib": max(mem),
           "pss_growth_mib": settled[-1] - settled[0],
           # the second half alone: what is left once Java's heap and JIT have grown to their level
           "pss_second_half_growth_mib": statistics.median(mem[-len(mem) // 5:])
                                         - statistics.median(mem[2 * len(mem) // 5: 3 * len(mem) // 5]),
           "by_kind_mib": {kind: [sampler.samples[len(mem) // 5][1][kind], sampler.samples[-1][1][kind]]
                           for kind in ("serve", "java", "workers")}}
    return row, sampler.samples


def budget(server: programs.Serve, goods: list[bytes], n: int) -> list[dict]:
    """Good-request latency at concurrency 2, alone and beside two clients sending the costliest
    request the budget admits; and how long the amplified request takes to be refused."""
    heavy = one_bit_png(6300)
    rows = []
    for contender in ("alone", "beside 2 worst-case clients"):
        stop = threading.Event()
        heavy_times = []

        def hammer(stop=stop, heavy_times=heavy_times):  # this round's
            s = requests.Session()
            while not stop.is_set():
                t = time.perf_counter()
                s.post(server.url + "/invocations", data=heavy, headers={"Content-Type": "image/png"}, timeout=120)
                heavy_times.append(time.perf_counter() - t)
        hammers = [threading.Thread(target=hammer, daemon=True) for _ in range(2 if contender != "alone" else 0)]
        for h in hammers:
            h.start()
        time.sleep(0.5 if hammers else 0)

        def one(body):
            t = time.perf_counter()
            assert requests.post(server.url + "/invocations", data=body, headers=JPEG, timeout=120).status_code == 200
            return time.perf_counter() - t
        with ThreadPoolExecutor(2) as pool:
            latencies = sorted(pool.map(one, [goods[i % len(goods)] for i in range(n)]))
        stop.set()
        for h in hammers:
            h.join()
        q = statistics.quantiles(latencies, n=100, method="inclusive")
        rows.append({"phase": f"good requests {contender}", "requests": n, "concurrency": 2,
                     "p50_ms": q[49] * 1e3, "p99_ms": q[98] * 1e3,
                     "worst_case_ms": statistics.median(heavy_times) * 1e3 if heavy_times else None})
    png = base64.b64encode(heavy).decode()
    amplified = json.dumps({"instances": [png] * 64}).encode()
    times = []
    for _ in range(5):
        t = time.perf_counter()
        r = requests.post(server.url + "/invocations", data=amplified, headers={"Content-Type": "application/json"})
        times.append(time.perf_counter() - t)
        assert r.status_code == 413, r.text
    rows.append({"phase": "amplified request (64 x 39.7 Mpx PNG, 0.42 MB) refused", "requests": 5,
                 "p50_ms": statistics.median(times) * 1e3, "p99_ms": max(times) * 1e3})
    return rows


ATTACKS = [  # (what, body, Content-Type, expected status)
    ("good traffic alone", None, None, None),
    ("progressive JPEG, 400,000 scans (4.5 MB)", hostile.progressive_jpeg_repeated_scans, "image/jpeg", 413),
    ("ICO holding a 60000x60000 1-bit PNG", hostile.ico_with_huge_png, "image/x-icon", 400),
    ("64 PNGs of 39.7 Mpx, EXIF after the pixels", lambda: hostile.amplified_json(64, 6300, late_exif=True),
     "application/json", 413),
    ("GIF with a 4.4 MB comment", hostile.gif_with_huge_comment, "image/gif", 413),
    ("8-bit RGBA PNG, 39.7 Mpx (counts 4/3)", lambda: hostile.deep_png(6300, 8), "image/png", 413),
    ("16-bit RGBA PNG, 39.7 Mpx (counts 8/3)", lambda: hostile.deep_png(6300), "image/png", 413),
    ("TIFF whose EXIF tags ask 4.5 GB", lambda: hostile.amplified_exif("tiff"), "image/tiff", 413),
    ("TIFF with 131,080 numbers in its tags", lambda: hostile.amplified_exif("tiff", 16, 65_000, value_type=5),
     "image/tiff", 200),
    ("JPEG whose EXIF tags ask 4.5 GB (kept from Pillow)", hostile.amplified_exif, "image/jpeg", 200),
    ("JPEG whose MPF index is 800,000 rationals (kept from Pillow)", hostile.jpeg_with_mpf, "image/jpeg", 200),
    ("run-length BMP, 36 Mpx in 24 KB", hostile.rle_bmp, "image/bmp", 413),
    ("JPEG with 6 MB of fill bytes", hostile.jpeg_with_fill_bytes, "image/jpeg", 413),
    ("PNG with 1,000 ICC profiles inflating to 1 GB (1 MB)", hostile.png_with_icc_chunks, "image/png", 400),
    ("TIFF with 4,000 tags (libtiff: quadratic)", hostile.tiff_with_many_tags, "image/tiff", 413),
    ("admitted: 1-bit PNG, 39.7 Mpx", lambda: hostile.one_bit_png(6300), "image/png", 200),
    ("admitted: progressive colour JPEG, 39.7 Mpx, 64 scans",
     lambda: hostile.progressive_jpeg_repeated_scans(6300, 54, "RGB"), "image/jpeg", 200),
    ("admitted: 8-bit RGBA PNG, 29.8 Mpx", lambda: hostile.deep_png(5455, 8), "image/png", 200),
    ("admitted: 8-bit RGB PNG, 39.7 Mpx", lambda: hostile.deep_png(6300, 8, 2), "image/png", 200),
    ("admitted: 16-bit RGBA PNG, 14.9 Mpx", lambda: hostile.deep_png(3857), "image/png", 200),
    ("admitted: run-length BMP, 1.6 Mpx (counts 25 times)", lambda: hostile.rle_bmp(1260), "image/bmp", 200),
    ("admitted: TIFF with 990 tags", lambda: hostile.tiff_with_many_tags(990), "image/tiff", 200),
]


def worker_cpu(pid: int) -> float:
    """CPU seconds MMS's Python processes under `serve` have used (a worker killed meanwhile drops out)."""
    listener, workers = mms.python_processes(pid)
    total = 0.0
    for p in filter(None, [listener, *workers]):
        try:
            times = p.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            continue
    return total


def attacks(server: programs.Serve, goods: list[bytes]) -> list[dict]:
    rows = []
    for what, make, content_type, expected in ATTACKS:
        body = make() if make else None
        stop, good, pings = threading.Event(), [], []

        def traffic(stop=stop, good=good, pings=pings):
            with ThreadPoolExecutor(4) as pool:
                def send(item):
                    t = time.perf_counter()
                    r = requests.post(server.url + "/invocations", data=item, headers=JPEG, timeout=120)
                    good.append((r.status_code, time.perf_counter() - t))
                for tick in itertools.count():
                    if stop.is_set():
                        break
                    if tick % 2 == 0:
                        pool.submit(send, goods[tick // 2 % len(goods)])
                    pings.append(requests.get(server.url + "/ping", timeout=10).status_code)
                    time.sleep(0.1)
        thread = threading.Thread(target=traffic, daemon=True)
        cpu, started = worker_cpu(server.process.pid), time.monotonic()
        thread.start()
        time.sleep(1)
        answers = []
        if body is not None:
            def attack(_, body=body, content_type=content_type):
                t = time.perf_counter()
                r = requests.post(server.url + "/invocations", data=body, headers={"Content-Type": content_type},
                                  timeout=180)
                return r.status_code, time.perf_counter() - t, r.headers.get("Content-Type", "")
            with ThreadPoolExecutor(2) as pool:
                answers = list(pool.map(attack, range(2)))
        time.sleep(1 if body is not None else 2)
        stop.set()
        thread.join()
        seconds, cpu = time.monotonic() - started, worker_cpu(server.process.pid) - cpu
        latencies = sorted(t for code, t in good if code == 200)
        rows.append({"phase": f"attack: {what}", "bytes": len(body) if body else None,
                     "answers": [code for code, _, _ in answers], "expected": expected,
                     "as_expected": all(code == expected and ctype.startswith("application/json" if code != 200
                                                                              else "") for code, _, ctype in answers),
                     "answer_s": max((t for _, t, _ in answers), default=None),
                     "worker_cpu_s": cpu, "window_s": seconds, "good": len(good),
                     "good_errors": sum(code != 200 for code, _ in good),
                     "p99_ms": statistics.quantiles(latencies, n=100, method="inclusive")[98] * 1e3
                     if len(latencies) > 1 else None,
                     "good_max_ms": max(latencies) * 1e3 if latencies else None,
                     "pings_not_200": sum(code != 200 for code in pings)})
        print(f"{what}: {rows[-1]}", flush=True)
    rate = rows[0]["worker_cpu_s"] / rows[0]["window_s"]  # good traffic alone
    for row in rows[1:]:  # what each copy of the attack cost the workers beyond the good traffic
        row["attack_cpu_s"] = max(0.0, (row["worker_cpu_s"] - rate * row["window_s"]) / 2)
    return rows


def plot(samples: list, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for kind in ("total", "workers", "java", "serve"):
        ax.plot([t for t, _ in samples], [s[kind] for _, s in samples], label=kind)
    ax.set_xlabel("seconds into the soak")
    ax.set_ylabel("PSS, MiB")
    ax.set_title("serve's process tree under the soak (workers killed during it)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--bad-every", type=int, default=5)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--budget-requests", type=int, default=200)
    parser.add_argument("--phases", default="soak,budget,attacks", help="which of soak, budget, attacks to run")
    parser.add_argument("--name", default="serve_soak")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = subset(DATA, work / "data", {"train": 4, "valid": 2, "test": 10})
        model = train_artifact(data, data / "test", args.backbone, work)
        goods = [p.read_bytes() for p in sorted((data / "test").rglob("*.JPEG"))]
        base = work / "serve"
        base.mkdir()
        (base / "model").symlink_to(model)
        server = programs.Serve(base)
        try:
            server.wait_healthy()
            for body in goods:  # warm: first forwards, Java's JIT
                requests.post(server.url + "/invocations", data=body, headers=JPEG, timeout=120)
            phases, rows, row, samples, attack_rows = args.phases.split(","), [], None, [], []
            if "soak" in phases:
                row, samples = soak(server, goods, args)
                rows.append(row)
            if "budget" in phases:
                rows += budget(server, goods, args.budget_requests)
            if "attacks" in phases:
                attack_rows = attacks(server, goods)
            assert server.process.poll() is None, server.output()[-3000:]
        finally:
            server.stop()
    args.results.mkdir(parents=True, exist_ok=True)
    if samples:
        plot(samples, args.results / f"{args.name}_memory.png")
    if rows:
        columns = {"phase": "phase", "requests": "requests", "concurrency": "concurrency",
                   "good_errors": "good errors", "bad_wrong_answers": "bad requests not a JSON 4xx",
                   "p50_ms": "good p50 ms", "p99_ms": "good p99 ms", "worst_case_ms": "worst-case request ms",
                   "kills": "workers killed", "recovery_max_s": "slowest recovery s",
                   "pss_first_mib": "tree PSS MiB (settled start)", "pss_last_mib": "tree PSS MiB (end)",
                   "pss_max_mib": "tree PSS MiB (max)",
                   "pss_second_half_growth_mib": "tree PSS growth, 2nd half (median of last fifth - middle fifth), MiB"}
        notes = f"{args.backbone}."
        if row:
            notes += (f" Soak: {row['good']} good and {row['bad']} bad requests in {row['seconds']:.0f} s. Recovery "
                      f"times (s): {', '.join(f'{r:.2f}' if r is not None else 'none' for r in row['recovery_s'])}. "
                      "PSS MiB at the settled start and the end, by process: "
                      + ", ".join(f"{k} {a:.0f} -> {b:.0f}" for k, (a, b) in row["by_kind_mib"].items())
                      + f". Memory over time: {args.name}_memory.png.")
        write(args.name, rows, columns, notes, results=args.results)
    if attack_rows:
        columns = {"phase": "attack (2 copies at once)", "bytes": "bytes", "answers": "answers",
                   "as_expected": "JSON answer as expected", "answer_s": "slowest answer s",
                   "attack_cpu_s": "worker CPU s per copy", "good": "good requests", "good_errors": "good errors",
                   "p99_ms": "good p99 ms", "good_max_ms": "good max ms", "pings_not_200": "/ping not 200"}
        notes = (f"{args.backbone}, {mms.workers()} workers. Each window: 1 s of good traffic (a JPEG every 0.2 s, "
                 "/ping every 0.1 s), two copies of the attack at once, 1 s more. Worker CPU per copy: the workers' "
                 "CPU seconds in the window less the good traffic's (at the rate of the first window), halved.")
        write(f"{args.name}_attacks", attack_rows, columns, notes, results=args.results)


if __name__ == "__main__":
    main()
