"""Serving latency: the image's `serve` (multi-model-server + our handler) over real HTTP on
127.0.0.1, against bare in-process preprocessing + forward with the same artifact, the same real
JPEGs (imagewoof10 test split) and the same torch threads, in the same run.

    python bench/serve_latency.py [--backbones resnet50,efficientnet_lite0] [--requests 100]
                                  [--concurrency 1,4,8] [--servers fp32,default] [--cold-starts 2]

Per backbone: a model made by the image's `train` (1 epoch on a tiny subset: serving cost does
not depend on how well it learned); in-process, latency and back-to-back requests/s, and forward
time per image at batch 1, 4 and 8 (does server-side batching pay?); per server configuration,
cold start of `serve` to the first /ping 200 and to the first answered /invocations, then latency
p50/p95/p99 and requests/s at each concurrency. The configurations (and, at concurrency 1, the
in-process baseline) take turns in rounds, so that the shared machine's drift hits all alike.
A configuration may name a precision (fp32, bf16, auto: SERVE_PRECISION); its in-process baseline
runs the same precision, and per precision the agreement with fp32 over every test photo is
measured (top-1 agreement, largest probability difference, accuracy both ways).
"""
from __future__ import annotations

import argparse
import datetime
import os
import re
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import DATA, OFFLINE_WEIGHTS, RESULTS, run_train, subset, write

import requests
import torch

from launch.local import programs
from image_classifier.models import batch_to
from image_classifier.preprocessing import decode
from image_classifier.serving import inference
from image_classifier.serving.environment import PRECISION, PRECISIONS, max_pixels
from image_classifier.serving.model_state import READY_LINE

JPEG = {"Content-Type": "image/jpeg"}
BATCHES = (1, 4, 8)
ROUNDS = 4  # turns each contender takes per concurrency level
WARMUP = 20  # requests before timing: the first after a start are slower (first forwards, Java's JIT)
# MMS's model_service_worker sets OMP_NUM_THREADS=1 unless it is set (an MXNet-era default),
# so every worker of the default server runs torch on one thread.
MMS_DEFAULT_THREADS = 1


def train_artifact(data: Path, test: Path, backbone: str, work: Path) -> Path:
    """2 epochs of the head on 20 photos a class; `train` measures its serving precisions against
    fp32 on every test photo (model.json), which is what SERVE_PRECISION=auto goes by."""
    base = work / f"train-{backbone}"
    run_train(base, {"train": data / "train", "valid": data / "valid", "test": test},
              {"backbone": backbone, "weights": OFFLINE_WEIGHTS.get(backbone, "none"), "epochs": 2, "batch-size": 25,
               "lr": 0.005, "num-workers": 0})
    return base / "model"


def summary(latencies: list[float], seconds: float) -> dict:
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return {"p50_ms": q[49] * 1e3, "p95_ms": q[94] * 1e3, "p99_ms": q[98] * 1e3,
            "requests_per_second": len(latencies) / seconds, "requests": len(latencies)}


class InProcess:
    """What the handler computes, without MMS and HTTP: decode, eval transform, forward and softmax
    with the handler's functions and its model loading, on THREADS torch threads."""

    def __init__(self, model_dir: Path, threads: int, serve_precision: str = "auto"):
        os.environ[PRECISION] = serve_precision  # what model_fn reads, as `serve` would
        try:
            self.model = inference.model_fn(str(model_dir))
        finally:
            os.environ.pop(PRECISION)
        self.threads = threads

    @torch.inference_mode()
    def predict(self, body: bytes) -> torch.Tensor:
        image = decode(body, self.model.preprocessing, max_pixels=max_pixels())
        x = batch_to(self.model.transform(image).unsqueeze(0), self.model.device)
        return torch.softmax(self.model.network(x), dim=1)

    def run(self, bodies: list[bytes], n: int, seconds: float) -> tuple[list[float], float]:
        """N predictions back to back (fewer if SECONDS run out): their latencies and the time taken."""
        torch.set_num_threads(self.threads)
        latencies = []
        started = time.perf_counter()
        for i in range(n):
            t = time.perf_counter()
            if t - started > seconds:
                break
            self.predict(bodies[i % len(bodies)])
            latencies.append(time.perf_counter() - t)
        return latencies, time.perf_counter() - started

    def batching(self, bodies: list[bytes]) -> dict:
        """Forward time per image at each of BATCHES, and what batching would gain end to end."""
        torch.set_num_threads(self.threads)
        t = time.perf_counter()
        tensors = [self.model.transform(decode(body, self.model.preprocessing)) for body in bodies[:max(BATCHES)]]
        pre = (time.perf_counter() - t) / len(tensors) * 1e3
        fwd = {b: forward_ms(self.model.network, batch_to(torch.stack(tensors[:b]), self.model.device))
               for b in BATCHES}
        # What explain=gradcam adds per image: a forward and backward in fp32, the map as a PNG.
        sizes = [decode(body, self.model.preprocessing).size for body in bodies[:max(BATCHES)]]
        inference.explain(self.model, tensors[0], sizes[0], 0)  # the first finds the layer to explain
        explain = []
        for tensor, size in zip(tensors, sizes):
            t = time.perf_counter()
            inference.explain(self.model, tensor, size, 0)
            explain.append((time.perf_counter() - t) * 1e3)
        # Batching only shares the forward pass; decoding stays per image.
        return {"preprocess_ms": pre, "forward_ms_per_image": fwd, "explain_ms": statistics.median(explain),
                "batch_gain": (pre + fwd[1]) / (pre + fwd[max(BATCHES)])}


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


def agreement_rows(backbone: str, bare: dict, test: Path) -> list[dict]:
    """Each reduced precision against fp32 on every test photo, with the handler's own functions."""
    fp32 = next((c for c in bare.values() if c.model.precision == "fp32"), None)
    folders = sorted(p.name for p in test.iterdir() if p.is_dir())
    photos = [(p, folders.index(p.parent.name)) for p in sorted(test.rglob("*.JPEG"))]
    rows = []
    for contender in bare.values():
        if fp32 is None or contender.model.precision == "fp32":
            continue
        with torch.inference_mode():
            p32 = torch.cat([fp32.predict(p.read_bytes()) for p, _ in photos])
            p = torch.cat([contender.predict(p.read_bytes()) for p, _ in photos])
        labels = torch.tensor([label for _, label in photos])
        rows.append({"backbone": backbone, "contender": f"agreement {contender.model.precision} vs fp32",
                     "precision": contender.model.precision, "images": len(photos),
                     "top1_agreement": (p32.argmax(1) == p.argmax(1)).float().mean().item(),
                     "max_probability_difference": (p32 - p).abs().max().item(),
                     "accuracy_fp32": (p32.argmax(1) == labels).float().mean().item(),
                     "accuracy": (p.argmax(1) == labels).float().mean().item()})
        print(f"   {rows[-1]}", flush=True)
    return rows


def until(check, server: programs.Serve, timeout: float = 180) -> float:
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


def start(model_dir: Path, work: Path, env: dict, body: bytes) -> tuple[programs.Serve, dict]:
    """A fresh `serve`; seconds from process start to /ping 200, to `serve`'s "model loaded" line
    and to the first answered request."""
    base = Path(tempfile.mkdtemp(dir=work, prefix="serve-"))
    (base / "model").symlink_to(model_dir)
    wall, started = time.time(), time.monotonic()
    server = programs.Serve(base, **env)
    try:
        ping = until(lambda: requests.get(server.url + "/ping", timeout=5).status_code == 200, server)
        # MMS queues requests until a worker has loaded the model: this returns when one could answer.
        answer = until(lambda: requests.post(server.url + "/invocations", data=body, headers=JPEG,
                                             timeout=120).status_code == 200, server)
    except BaseException:
        server.stop()
        raise
    # `serve` logs this line when a worker has loaded the model.
    logged = re.search(rf"^(\S+ \S+) INFO image_classifier.serve: {READY_LINE}", server.output(), re.M).group(1)
    loaded = datetime.datetime.strptime(logged, "%Y-%m-%d %H:%M:%S,%f").timestamp() - wall
    return server, {"ping": ping - started, "loaded": loaded, "answer": answer - started}


def backend_ms(log: str) -> list[float]:
    """MMS's own per-request "Backend response time" (ms, Java's clock): from handing the request
    to the Python worker to its answer; what the handler costs inside the worker, plus the
    worker's protocol. The rest of a request's latency is MMS's frontend, HTTP and the client."""
    return [float(ms) for ms in re.findall(r"Backend response time: (\d+)", log)]


def load(url: str, bodies: list[bytes], concurrency: int, n: int, seconds: float) -> tuple[list[float], float]:
    """N requests (fewer if SECONDS run out) from CONCURRENCY client threads, each with its own
    keep-alive connection: their latencies and the time taken."""
    latencies = []
    started = time.perf_counter()

    def client(first: int) -> None:
        with requests.Session() as session:
            session.trust_env = False  # no per-request proxy lookup in the environment: it doubled a /ping here
            for i in range(first, n, concurrency):
                t = time.perf_counter()
                if t - started > seconds:
                    break
                response = session.post(url + "/invocations", data=bodies[i % len(bodies)], headers=JPEG, timeout=120)
                latencies.append(time.perf_counter() - t)
                response.raise_for_status()

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(client, range(concurrency)))
    return latencies, time.perf_counter() - started


def parse_server(spec: str) -> tuple[dict, int | None, int, str]:
    """'default' (`serve` as shipped), 'WxT' (W MMS workers, T torch threads each), 'no-preload'
    (each worker loads the model itself), 'batchN' (MMS's dynamic batching: SERVE_BATCH_SIZE=N)
    and/or a precision (fp32, bf16, auto), joined by '+' -> environment, workers, threads, precision."""
    env, workers, threads, wanted = {}, None, MMS_DEFAULT_THREADS, "auto"
    for part in spec.split("+"):
        if part == "no-preload":
            env["MMS_PRELOAD_MODEL"] = "false"
        elif part.startswith("batch"):
            env["SERVE_BATCH_SIZE"] = int(part[len("batch"):])
        elif part in PRECISIONS:
            env[PRECISION] = wanted = part
        elif part != "default":
            workers, threads = (int(x) for x in part.split("x"))
            env.update(SAGEMAKER_MODEL_SERVER_WORKERS=workers, OMP_NUM_THREADS=threads)
    return env, workers, threads, wanted


def serve_rows(backbone: str, specs: list[str], model_dir: Path, bodies: list[bytes], bare: dict[int, InProcess],
               args, work: Path) -> list[dict]:
    configs = {spec: parse_server(spec) for spec in specs}
    cold = {spec: [] for spec in specs}
    running = {}
    try:
        for i in range(args.cold_starts):  # one start of each in turn; the last ones stay up
            for spec, (env, *_) in configs.items():
                server, times = start(model_dir, work, env, bodies[0])
                cold[spec].append(times)
                running[spec] = server
                if i < args.cold_starts - 1:
                    running.pop(spec).stop()
        levels = sorted(args.concurrency)
        for server in running.values():
            load(server.url, bodies, levels[-1], WARMUP, args.max_seconds)  # at the top concurrency: every worker
        rows = []
        for c in levels:
            served = {spec: ([], 0.0) for spec in specs}
            inproc = {spec: [] for spec in specs}
            backend = {spec: [] for spec in specs}
            for _ in range(ROUNDS):
                for spec, server in running.items():
                    if c == 1:
                        inproc[spec] += bare[configs[spec][2:]].run(bodies, args.requests // ROUNDS,
                                                                   args.max_seconds / ROUNDS)[0]
                    logged = len(server.output()) if c == 1 else 0
                    latencies, seconds = load(server.url, bodies, c, args.requests // ROUNDS, args.max_seconds / ROUNDS)
                    served[spec] = (served[spec][0] + latencies, served[spec][1] + seconds)
                    if c == 1:
                        backend[spec] += backend_ms(server.output()[logged:])
            for spec, server in running.items():
                _, workers, threads, wanted = configs[spec]
                workers = workers or int(re.search(r"Default workers per model: (\d+)", server.output()).group(1))
                row = {"backbone": backbone, "contender": f"serve {spec}", "workers": workers, "threads": threads,
                       "precision": bare[configs[spec][2:]].model.precision, "concurrency": c,
                       **summary(*served[spec])}
                if c == 1:
                    bare_p50 = statistics.median(inproc[spec]) * 1e3
                    backend_p50 = statistics.median(backend[spec])
                    row.update(in_process_p50_ms=bare_p50, vs_in_process=row["p50_ms"] / bare_p50,
                               backend_p50_ms=backend_p50, vs_backend=row["p50_ms"] / backend_p50,
                               cold_starts=cold[spec],
                               **{f"cold_{k}_s": statistics.median(t[k] for t in cold[spec]) for k in cold[spec][0]})
                rows.append(row)
                print(f"   {spec} c={c}: p50 {row['p50_ms']:.1f} ms, {row['requests_per_second']:.1f} req/s",
                      flush=True)
    finally:
        for server in running.values():
            server.stop()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--backbones", default="resnet50,efficientnet_lite0")
    parser.add_argument("--requests", type=int, default=100, help="timed requests per concurrency level")
    parser.add_argument("--max-seconds", type=float, default=4,
                        help="per concurrency level: stop sooner when this runs out (slow configurations)")
    parser.add_argument("--concurrency", type=lambda s: [int(c) for c in s.split(",")], default=[1, 4, 8])
    parser.add_argument("--servers", default="fp32,default",
                        help="server configurations: 'default' (as shipped), WORKERSxTHREADS, 'no-preload', "
                             "'batchN' (SERVE_BATCH_SIZE=N), a precision (fp32, bf16, auto), or several joined by '+'")
    parser.add_argument("--cold-starts", type=int, default=2, help="fresh starts of each server configuration")
    parser.add_argument("--test-per-class", type=int, default=4, help="distinct test JPEGs per class (10 classes)")
    parser.add_argument("--train-per-class", type=int, default=20, help="photos a class the model is trained on")
    parser.add_argument("--name", default="serve_latency", help="results file name")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where NAME.json and NAME.md go")
    args = parser.parse_args()
    specs = args.servers.split(",")
    load_before = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = subset(args.data, work / "data", {"train": 2, "valid": 1, "test": args.test_per_class})
        bodies = [p.read_bytes() for p in sorted((data / "test").rglob("*.JPEG"))]
        training = subset(args.data, work / "training", {"train": args.train_per_class, "valid": 5})
        for backbone in args.backbones.split(","):
            print(f"== {backbone}", flush=True)
            model_dir = train_artifact(training, args.data / "test", backbone, work)
            bare = {key: InProcess(model_dir, *key) for key in sorted({parse_server(s)[2:] for s in specs})}
            for (threads, _), contender in bare.items():
                contender.run(bodies, 8, args.max_seconds)  # warm-up
                row = {"backbone": backbone, "contender": "in-process", "threads": threads,
                       "precision": contender.model.precision, "concurrency": 1,
                       **summary(*contender.run(bodies, args.requests, args.max_seconds))}
                if threads == MMS_DEFAULT_THREADS:  # where the default server runs; more threads collapse here
                    row.update(contender.batching(bodies))
                rows.append(row)
                print(f"   in-process {threads} thread(s), {contender.model.precision}: p50 {row['p50_ms']:.1f} ms",
                      flush=True)
            rows.extend(agreement_rows(backbone, bare, args.data / "test"))
            rows.extend(serve_rows(backbone, specs, model_dir, bodies, bare, args, work))
    load_after = os.getloadavg()[0]
    write(args.name, rows, {
        "backbone": "backbone", "contender": "contender", "workers": "MMS workers", "threads": "torch threads",
        "precision": "precision", "images": "images", "top1_agreement": "top-1 agreement",
        "max_probability_difference": "largest prob. diff.", "accuracy_fp32": "accuracy fp32",
        "accuracy": "accuracy",
        "concurrency": "concurrency", "p50_ms": "p50 ms", "p95_ms": "p95 ms", "p99_ms": "p99 ms",
        "requests_per_second": "req/s", "in_process_p50_ms": "in-process p50 ms (same rounds)",
        "vs_in_process": "p50 / in-process p50", "backend_p50_ms": "MMS backend p50 ms",
        "vs_backend": "p50 / backend p50", "cold_ping_s": "cold start: /ping 200 s",
        "cold_loaded_s": "model loaded s", "cold_answer_s": "first answer s"},
        notes=notes(rows, args, load_before, load_after), results=args.results)
    return 0


BATCHING_HEADER = ("| backbone | precision | torch threads | decode + transform ms | forward ms/image b1 | b4 | b8 | "
                   "gain b8 | explain=gradcam ms/image |\n|---|---|---|---|---|---|---|---|---|")


def notes(rows: list[dict], args, load_before: float, load_after: float) -> str:
    inproc = [r for r in rows if "batch_gain" in r]
    batching = ""
    if inproc:
        best = max(r["batch_gain"] for r in inproc)
        verdict = (f"At most {best:.2f}x, below 1.3x: server-side batching (SERVE_BATCH_SIZE, MMS's batch_size "
                   "with max_batch_delay) would not pay on this machine. One image already keeps a core "
                   "busy, and decoding stays per image." if best < 1.3 else
                   f"Up to {best:.2f}x: server-side batching (SERVE_BATCH_SIZE) may pay; the `batchN` rows "
                   "measure it through `serve`.")
        table = "\n".join(
            f"| {r['backbone']} | {r['precision']} | {r['threads']} | {r['preprocess_ms']:.1f} | "
            + " | ".join(f"{r['forward_ms_per_image'][b]:.1f}" for b in BATCHES)
            + f" | {r['batch_gain']:.2f} | {r['explain_ms']:.0f} |" for r in inproc)
        batching = f"""

Batching, in-process (forward ms per image at batch 1, 4 and 8, median of 5; gain: end-to-end
images/s at batch 8 over batch 1, decoding included), and what CustomAttributes explain=gradcam adds
per image (median of 8: Grad-CAM's fp32 forward and backward, the heat map as a PNG of the photo's
size; decoding not included):

{BATCHING_HEADER}
{table}

{verdict}"""
    return f"""\
Method: each backbone's model is made by the image's `train` (the head, 2 epochs on
{args.train_per_class} photos per class, tested on every test photo, which is where `train` measures the
agreement that SERVE_PRECISION=auto goes by; ResNets with weights=none, as no ImageNet ResNet
weights are available offline: same compute, but an untrained backbone whose near-uniform answers
flip under bf16, so auto serves it in fp32). Agreement rows: every test photo through the
handler's functions in fp32 and in the reduced precision.
`serve` runs natively on 127.0.0.1 as the serving tests run it. Cold start: median of
{args.cold_starts} fresh starts, seconds from process start to /ping 200, to `serve`'s log line
"{READY_LINE}" (a worker has loaded the model) and to the first 200 from
/invocations. The first answer is the honest number: MMS answers /ping 200 ("Healthy") as soon
as its workers are up, seconds before any of them has loaded the model; requests sent meanwhile
wait in MMS's queue. Load: after {WARMUP} warm-up requests, the
servers take turns, {ROUNDS} rounds of {args.requests // ROUNDS} requests per concurrency level
(fewer where {args.max_seconds / ROUNDS:g} s ran out), each a real imagewoof10 test JPEG (cycling
over {args.test_per_class * 10}) POSTed as image/jpeg with `requests` (one keep-alive session per
client thread, on the same 2 cores as the server). Server configurations: `default` is `serve` as
shipped (MMS: one worker per core, each worker's torch on {MMS_DEFAULT_THREADS} thread, as MMS's
worker sets OMP_NUM_THREADS=1 when unset; the model preloaded once and the workers forked from
it); `no-preload` (MMS_PRELOAD_MODEL=false): each worker imports torch and loads the model
itself, as `serve` did before; `WxT`: SAGEMAKER_MODEL_SERVER_WORKERS=W and OMP_NUM_THREADS=T
(with T > 1 `serve` does not preload). In-process: decode + eval transform + forward + softmax
with the handler's functions and its model loading, one image at a time back to back, with the
torch threads of the server it is compared with: alone (its rows), and at concurrency 1 in the
same rounds as each server ("p50 / in-process p50"). "MMS backend p50": the median of MMS's
own log line "Backend response time" over the same concurrency-1 requests (whole ms, Java's
clock), the time from handing a request to the Python worker to its answer: the handler's own
work inside the worker. "p50 / backend p50" is thus what MMS's frontend, HTTP and the client add,
free of how fast the worker process happens to compute. 1-minute load average (other work on
this shared machine): {load_before:.1f} before, {load_after:.1f} after.{batching}"""


if __name__ == "__main__":
    raise SystemExit(main())
