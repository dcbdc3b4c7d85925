"""Serving latency: the image's `serve` (multi-model-server + our handler) over real HTTP on
127.0.0.1, against bare in-process preprocessing + forward with the same artifact, the same real
JPEGs (imagewoof10 test split) and the same torch threads, in the same run.

    python bench/serve_latency.py [--backbones resnet50,efficientnet_lite0] [--requests 200]
                                  [--concurrency 1,4,8] [--servers default,1x2] [--cold-starts 3]

Per backbone: a model made by the image's `train` (1 epoch on a tiny subset: serving cost does
not depend on how well it learned); per server configuration, cold start of `serve` to the first
/ping 200 and to the first answered /invocations, then latency p50/p95/p99 and requests/s at each
concurrency; in-process, latency and back-to-back requests/s, and forward time per image at
batch 1, 4 and 8 (does server-side batching pay?).
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import DATA, OFFLINE_WEIGHTS, RESULTS, subset, write  # first: puts container/ on sys.path

import requests
import torch

from image_classifier import local
from image_classifier.models import batch_to
from image_classifier.preprocessing import decode
from image_classifier.serving import inference
from image_classifier.serving.limits import max_pixels

JPEG = {"Content-Type": "image/jpeg"}
BATCHES = (1, 4, 8)
WARMUP = 50  # requests before timing: MMS's Java front end is measurably slower for its first ~100
# MMS's model_service_worker sets OMP_NUM_THREADS=1 unless it is set (an MXNet-era default),
# so every worker of the default server runs torch on one thread.
MMS_DEFAULT_THREADS = 1


def train_artifact(data: Path, backbone: str, work: Path) -> Path:
    base = local.make_tree(work / f"train-{backbone}", {"train": data / "train", "valid": data / "valid"},
                           {"backbone": backbone, "weights": OFFLINE_WEIGHTS.get(backbone, "none"), "epochs": 1,
                            "batch-size": 8, "num-workers": 0})
    result = subprocess.run(local.program("train"), env=local.program_env(base), capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"train failed: {result.stderr[-2000:]}")
    return base / "model"


def summary(latencies: list[float], seconds: float) -> dict:
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return {"p50_ms": q[49] * 1e3, "p95_ms": q[94] * 1e3, "p99_ms": q[98] * 1e3,
            "requests_per_second": len(latencies) / seconds, "requests": len(latencies)}


def in_process(model_dir: Path, bodies: list[bytes], n: int, threads: int) -> dict:
    """What the handler computes, without MMS and HTTP: decode, eval transform, forward, softmax."""
    torch.set_num_threads(threads)
    model = inference.model_fn(str(model_dir))  # loaded as the handler loads it

    @torch.inference_mode()
    def predict(body: bytes) -> torch.Tensor:
        image = decode(body, model.preprocessing, max_pixels=max_pixels())
        x = batch_to(model.transform(image).unsqueeze(0), model.device)
        return torch.softmax(model.network(x), dim=1)

    for body in bodies[:8]:
        predict(body)
    latencies = []
    started = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        predict(bodies[i % len(bodies)])
        latencies.append(time.perf_counter() - t)
    row = summary(latencies, time.perf_counter() - started)

    t = time.perf_counter()
    tensors = [model.transform(decode(body, model.preprocessing)) for body in bodies[:max(BATCHES)]]
    row["preprocess_ms"] = (time.perf_counter() - t) / len(tensors) * 1e3
    row["forward_ms_per_image"] = {b: forward_ms(model.network, batch_to(torch.stack(tensors[:b]), model.device))
                                   for b in BATCHES}
    fwd = row["forward_ms_per_image"]
    # Batching only shares the forward pass; decoding stays per image.
    row["batch_gain"] = (row["preprocess_ms"] + fwd[1]) / (row["preprocess_ms"] + fwd[max(BATCHES)])
    return row


@torch.inference_mode()
def forward_ms(network: torch.nn.Module, x: torch.Tensor, repeat: int = 5) -> float:
    """Median of REPEAT timed forward passes (the median resists the shared machine's noise), per image."""
    network(x)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        network(x)
        times.append(time.perf_counter() - t)
    return statistics.median(times) / len(x) * 1e3


def until(check, server: local.Serve, timeout: float = 180) -> float:
    """Poll CHECK until it is true; the time it was."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if server.process.poll() is not None:
            raise SystemExit(f"serve exited {server.process.returncode}:\n{server.output()[-3000:]}")
        try:
            if check():
                return time.monotonic()
        except requests.ConnectionError:
            pass
        time.sleep(0.02)
    raise SystemExit(f"serve not ready in {timeout}s:\n{server.output()[-3000:]}")


def start(model_dir: Path, work: Path, env: dict, body: bytes) -> tuple[local.Serve, float, float]:
    """A fresh `serve`; seconds from process start to /ping 200 and to the first answered request."""
    base = Path(tempfile.mkdtemp(dir=work, prefix="serve-"))
    (base / "model").symlink_to(model_dir)
    started = time.monotonic()
    server = local.Serve(base, **env)
    try:
        ping = until(lambda: requests.get(server.url + "/ping", timeout=5).status_code == 200, server)
        # MMS queues requests until a worker has loaded the model: this returns when one could answer.
        answer = until(lambda: requests.post(server.url + "/invocations", data=body, headers=JPEG,
                                             timeout=120).status_code == 200, server)
    except BaseException:
        server.stop()
        raise
    return server, ping - started, answer - started


def load(url: str, bodies: list[bytes], concurrency: int, n: int) -> dict:
    """N requests from CONCURRENCY client threads, each with its own keep-alive connection."""
    latencies = []

    def client(first: int) -> None:
        with requests.Session() as session:
            session.trust_env = False  # no proxy lookups from the environment: 1-8 ms a request here
            for i in range(first, n, concurrency):
                t = time.perf_counter()
                response = session.post(url + "/invocations", data=bodies[i % len(bodies)], headers=JPEG, timeout=120)
                latencies.append(time.perf_counter() - t)
                response.raise_for_status()

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(client, range(concurrency)))
    return summary(latencies, time.perf_counter() - started)


def parse_server(spec: str) -> tuple[dict, int | None, int]:
    """'default' (as shipped) or 'WxT': W MMS workers with T torch threads each -> env, workers, threads."""
    if spec == "default":
        return {}, None, MMS_DEFAULT_THREADS
    workers, threads = (int(x) for x in spec.split("x"))
    return {"SAGEMAKER_MODEL_SERVER_WORKERS": workers, "OMP_NUM_THREADS": threads}, workers, threads


def serve_rows(backbone: str, spec: str, model_dir: Path, bodies: list[bytes], args, work: Path,
               baselines: dict) -> list[dict]:
    env, workers, threads = parse_server(spec)
    pings, answers = [], []
    for i in range(args.cold_starts):
        server, ping, answer = start(model_dir, work, env, bodies[0])
        pings.append(ping)
        answers.append(answer)
        if i < args.cold_starts - 1:
            server.stop()
    try:
        workers = workers or int(re.search(r"Default workers per model: (\d+)", server.output()).group(1))
        levels = sorted(args.concurrency)
        load(server.url, bodies, levels[-1], WARMUP)  # at the highest concurrency: warms every worker
        rows = []
        for c in levels:
            row = {"backbone": backbone, "contender": f"serve {spec}", "workers": workers, "threads": threads,
                   "concurrency": c, **load(server.url, bodies, c, args.requests)}
            if c == 1:
                row.update(vs_in_process=row["p50_ms"] / baselines[threads]["p50_ms"],
                           cold_ping_s=statistics.median(pings), cold_answer_s=statistics.median(answers),
                           cold_ping_samples=pings, cold_answer_samples=answers)
            rows.append(row)
            print(f"   {spec} c={c}: p50 {row['p50_ms']:.1f} ms, {row['requests_per_second']:.1f} req/s", flush=True)
    finally:
        server.stop()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--backbones", default="resnet50,efficientnet_lite0")
    parser.add_argument("--requests", type=int, default=200, help="timed requests per concurrency level")
    parser.add_argument("--concurrency", type=lambda s: [int(c) for c in s.split(",")], default=[1, 4, 8])
    parser.add_argument("--servers", default="default,1x2,2x2",
                        help="server configurations: 'default' (as shipped) or WORKERSxTHREADS")
    parser.add_argument("--cold-starts", type=int, default=2, help="fresh starts of each server configuration")
    parser.add_argument("--test-per-class", type=int, default=4, help="distinct test JPEGs per class (10 classes)")
    parser.add_argument("--name", default="serve_latency", help="results file name")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where NAME.json and NAME.md go")
    args = parser.parse_args()
    servers = args.servers.split(",")
    load_before = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = subset(args.data, work / "data", {"train": 2, "valid": 1, "test": args.test_per_class})
        bodies = [p.read_bytes() for p in sorted((data / "test").rglob("*.JPEG"))]
        for backbone in args.backbones.split(","):
            print(f"== {backbone}", flush=True)
            model_dir = train_artifact(data, backbone, work)
            baselines = {}
            for threads in sorted({parse_server(s)[2] for s in servers}):
                baselines[threads] = in_process(model_dir, bodies, args.requests, threads)
                rows.append({"backbone": backbone, "contender": "in-process", "threads": threads, "concurrency": 1,
                             **baselines[threads]})
                print(f"   in-process {threads} thread(s): p50 {baselines[threads]['p50_ms']:.1f} ms", flush=True)
            for spec in servers:
                rows.extend(serve_rows(backbone, spec, model_dir, bodies, args, work, baselines))
    load_after = os.getloadavg()[0]
    write(args.name, rows, {
        "backbone": "backbone", "contender": "contender", "workers": "MMS workers", "threads": "torch threads",
        "concurrency": "concurrency", "p50_ms": "p50 ms", "p95_ms": "p95 ms", "p99_ms": "p99 ms",
        "requests_per_second": "req/s", "vs_in_process": "p50 / in-process p50", "cold_ping_s": "cold start: /ping s",
        "cold_answer_s": "cold start: first answer s"},
        notes=notes(rows, args, load_before, load_after), results=args.results)
    return 0


def notes(rows: list[dict], args, load_before: float, load_after: float) -> str:
    batching = "\n".join(
        f"| {r['backbone']} | {r['threads']} | {r['preprocess_ms']:.1f} | "
        + " | ".join(f"{r['forward_ms_per_image'][b]:.1f}" for b in BATCHES) + f" | {r['batch_gain']:.2f} |"
        for r in rows if r["contender"] == "in-process")
    return f"""\
Method: each backbone's model is made by the image's `train` (1 epoch on 2 images per class;
ResNets with weights=none, as no ImageNet ResNet weights are available offline: same compute).
`serve` runs natively on 127.0.0.1 as the serving tests run it. Cold start is the median of
{args.cold_starts} fresh starts from process start; "first answer" (the first 200 from
/invocations) is the honest number: our /ping answers 200 (status "Healthy") as soon as MMS has
spawned its workers, seconds before any worker has loaded the model; requests sent meanwhile
wait in MMS's queue. Load: {args.requests} timed requests per concurrency level after a warm-up,
each a real imagewoof10 test JPEG (cycling over {args.test_per_class * 10}) POSTed as image/jpeg
with `requests` (one keep-alive session per client thread, on the same 2 cores as the server).
Server configurations: `default` is `serve` as shipped (MMS: one worker per core; each worker's
torch runs {MMS_DEFAULT_THREADS} thread); `WxT` sets SAGEMAKER_MODEL_SERVER_WORKERS=W and
OMP_NUM_THREADS=T. In-process: decode + eval transform + forward + softmax with the same
functions and the same artifact loading as the handler, one image at a time back to back, torch
threads as in the server it is compared with ("p50 / in-process p50" is at concurrency 1 with the
same threads). 1-minute load average (other work on this shared machine): {load_before:.1f}
before, {load_after:.1f} after.

Batching, in-process (forward ms per image at batch 1, 4, 8; gain = end-to-end images/s at
batch 8 over batch 1, decoding included):

| backbone | torch threads | decode + transform ms | forward ms/image b1 | b4 | b8 | gain b8 |
|---|---|---|---|---|---|---|
{batching}"""


if __name__ == "__main__":
    raise SystemExit(main())
