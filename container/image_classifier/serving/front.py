"""`serve`'s HTTP front: the only listener on the endpoint's port, in front of MMS's private sockets.

It answers what MMS answers wrongly and passes on only what SageMaker sends:
- /ping is 200 only while a loaded worker can answer (MMS's own /ping says 200 "Unhealthy" with
  every worker dead); otherwise 503 with the reason. A worker set that stays dead past
  SERVE_UNHEALTHY_SECONDS stops `serve` with the reason, so that SageMaker replaces the container.
- POST /invocations (single model) and, with SAGEMAKER_MULTI_MODEL=true, SageMaker's multi-model
  routes: POST /models {model_name, url: a folder under /opt/ml/models}, GET /models,
  GET /models/NAME, DELETE /models/NAME, POST /models/NAME/invoke. Nothing else of MMS's
  management API (loading from URLs, scaling workers, describing them) is reachable.
- Every error is JSON: bodies over the payload limit get 413 before they are read, wrong methods
  405, unknown routes 404, a body without a Content-Type (curl's and urllib's form default) is
  taken as image bytes.
- SIGTERM stops accepting connections and lets requests in flight finish (up to
  SERVE_DRAIN_SECONDS; SageMaker sends SIGKILL 30 s after SIGTERM).
"""
from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
import psutil
from aiohttp import web

from . import mms, model_state, model_store, worker_deadlines
from .http_errors import JsonErrorRunner, json_error
from .responses import JSON_TYPE, media_type, payload_too_large

log = logging.getLogger("image_classifier.serve")

# Hop-by-hop headers (RFC 9110 7.6.1) and what aiohttp sets itself.
NOT_FORWARDED = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host",
                 "content-length", "proxy-authorization", "proxy-authenticate", "date", "server"}
FORM_TYPES = ("", "application/x-www-form-urlencoded")  # no Content-Type, or curl/urllib's default
MMS_URL = "http://mms"  # the host part is ignored on a Unix socket
HEALTHY = ("Healthy", "Partial Healthy")  # MMS's /ping status while at least one worker is up
WORKER_DIED = b'"message": "Worker died."'  # MMS's 500 for a request whose worker process died
RETRIES = 3
# A request that holds its worker this long is not ordinary (the costliest admitted decode takes
# under 1 s): when every worker is so held, /ping says 503 until one is free or killed.
HELD_SECONDS = 2.0
SETTLE_SECONDS = 0.5  # after a kill, before MMS's /ping reflects the dead worker


class TooLarge(Exception):
    pass


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class Health:
    """What /ping says, from MMS's own worker status, the workers' deadline records and, for a
    single model, the worker's load report. BUSY: every worker has been held by one request for
    over HELD_SECONDS; requests still queue for them (they end by their deadline at the latest)."""
    STARTING, READY, BUSY, DOWN, DRAINING = "starting", "ready", "busy", "down", "draining"

    def __init__(self):
        self.state, self.reason = self.STARTING, "the model is loading"
        self.ready = asyncio.Event()
        self.down_since = 0.0

    @property
    def ok(self) -> bool:
        return self.state == self.READY


class Front:
    def __init__(self, run_dir: Path, process: subprocess.Popen, *, multi_model: bool, payload_limit: int,
                 request_timeout: float, drain_seconds: float, unhealthy_seconds: float, started: float,
                 batching: dict | None = None, register: Path | None = None):
        """batching: MMS's batch_size and max_batch_delay for every model; register: the single
        model's staged folder when MMS was started without it (batching needs its management API)."""
        self.run_dir, self.process, self.multi = Path(run_dir), process, multi_model
        self.batching, self.register = batching or {}, register
        self.payload_limit, self.request_timeout = payload_limit, request_timeout
        self.drain_seconds, self.unhealthy_seconds, self.started = drain_seconds, unhealthy_seconds, started
        self.health = Health()
        self.models: dict[str, tuple[str, Path]] = {}  # multi-model: name -> (url as sent, staged folder)
        self.load_lock = asyncio.Lock()
        self.registered = asyncio.Event()  # the single model registered with MMS (batching), or nothing to do
        if register is None:
            self.registered.set()
        self.in_flight = 0
        self.request_ids = itertools.count(1)
        self.workers_per_model = mms.workers()  # once: without the setting it asks nvidia-smi
        self.overran: dict[str, worker_deadlines.Busy] = {}  # request id -> the killed worker's record
        self.replacing_until = 0.0  # until then, requests wait for the workers we killed to be replaced
        self.replacing: dict[int, float] = {}  # pid of a killed worker -> when, until MMS reports all back
        self.problem: str | None = None
        self.stopped = asyncio.Event()

    # --- the app ---------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._json_errors], client_max_size=self.payload_limit)
        app.router.add_get("/ping", self.ping, allow_head=True)
        if self.multi:
            app.router.add_post("/models", self.load)
            app.router.add_get("/models", self.list_models)
            app.router.add_get("/models/{name}", self.describe)
            app.router.add_delete("/models/{name}", self.unload)
            app.router.add_post("/models/{name}/invoke", self.invoke_model)
        else:
            app.router.add_post("/invocations", self.invocations)
        return app

    @web.middleware
    async def _json_errors(self, request: web.Request, handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPMethodNotAllowed as e:
            return json_error(405, f"{request.method} is not allowed on {request.path}; use "
                                   f"{', '.join(sorted(e.allowed_methods))}",
                              Allow=", ".join(sorted(e.allowed_methods)))
        except web.HTTPNotFound:
            what = ("multi-model routes are /models and /models/NAME/invoke" if self.multi
                    else "this endpoint answers GET /ping and POST /invocations")
            return json_error(404, f"no such route: {request.method} {request.path} ({what})")
        except web.HTTPException as e:
            return json_error(e.status, e.reason)
        except TooLarge as e:
            return json_error(413, str(e))

    # --- health ----------------------------------------------------------------------------------
    async def ping(self, request: web.Request) -> web.Response:
        if self.health.ok:
            return web.json_response({"status": "Healthy"})
        return web.json_response({"status": self.health.state, "message": self.health.reason}, status=503)

    async def _mms_status(self, session: aiohttp.ClientSession) -> str | None:
        try:
            async with session.get(MMS_URL + "/ping", timeout=aiohttp.ClientTimeout(total=2)) as r:
                return (await r.json(content_type=None)).get("status")
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, AttributeError):
            return None

    async def watch(self, session: aiohttp.ClientSession) -> None:
        """Follow MMS: ready once a worker can answer, down when none can, and stop `serve` when the
        model fails to load, MMS exits, or no worker comes back within unhealthy_seconds."""
        health = self.health
        while not self.stopped.is_set():
            if self.process.poll() is not None:
                return self.stop(f"the model server exited by itself (exit {self.process.returncode})")
            # A single model must have reported its load; a multi-model endpoint's models report
            # at POST /models.
            loaded, failed = (True, None) if self.multi else model_state.read(self.run_dir)
            if failed:
                return self.stop(failed)
            now = time.monotonic()  # before asking MMS: a slow answer may be older than it looks
            held = self._enforce_deadlines()
            status = await self._mms_status(session)
            # MMS's status is stale until it notices the dead workers: judged SETTLE_SECONDS after the last kill
            if self.replacing and now > max(self.replacing.values()) + SETTLE_SECONDS and status in HEALTHY:
                self._replaced(status)
            unavailable = self._unavailable(held)
            if not (status in HEALTHY and loaded and self.registered.is_set()):
                state = health.DOWN
                reason = f"no model worker can answer (model server status: {status or 'not answering'})"
            elif unavailable:
                state, reason = (health.DOWN if self.replacing else health.BUSY), unavailable
            else:
                state, reason = health.READY, ""
            if health.state == health.STARTING and state != health.READY:
                pass  # still loading: STARTING until the first worker answers
            elif state != health.state:
                self._become(state, reason, now)
            elif state == health.DOWN and now - health.down_since > self.unhealthy_seconds:
                return self.stop(f"no model worker could answer for {self.unhealthy_seconds:g} s ({health.reason}); "
                                 "stopping so the container is replaced")
            else:
                health.reason = reason
            await asyncio.sleep(0.1 if health.state == health.STARTING else 0.25)

    def _replaced(self, status: str) -> None:
        """MMS says "Healthy" once every worker is back, "Partial Healthy" while at least one is: then
        the killed workers still being replaced are at most all but one."""
        left = 0 if status == "Healthy" else min(len(self.replacing), self._workers() - 1)
        for pid in sorted(self.replacing, key=self.replacing.get)[:len(self.replacing) - left]:
            del self.replacing[pid]
        if not left:
            log.info("the model server has replaced the model worker(s) stopped")

    def _become(self, state: str, reason: str, now: float) -> None:
        health = self.health
        if state == health.READY:
            if health.state == health.STARTING:
                log.info("%s (%.1f s after `serve` started)", model_state.READY_LINE if not self.multi
                         else "model server ready for POST /models", now - self.started)
            elif health.state == health.BUSY:
                log.info("a model worker is free again; /ping is 200")
            else:
                log.warning("a model worker answers again after %.1f s; /ping is 200", now - health.down_since)
            health.ready.set()
        elif state == health.BUSY:  # requests queue in MMS for the held workers: none waits here
            log.warning("%s; /ping is 503 until one is free", reason)
            health.ready.set()
        else:
            health.down_since = now
            health.ready.clear()
            log.error("%s; /ping is 503 until one is back", reason)
        health.state, health.reason = state, reason

    def _workers(self) -> int:
        return self.workers_per_model * max(1, len(self.models))

    def _unavailable(self, held: list[worker_deadlines.Busy]) -> str | None:
        """Why no worker can take a request now, or None: the workers killed and not yet replaced,
        and those held by one request's decoding for over HELD_SECONDS, are all of them. (A long
        forward is the model's ordinary work, bounded by its own deadline: not counted.)"""
        workers = self._workers()
        if len(self.replacing) + len(held) < workers:
            return None
        parts = [f"replacing the {len(self.replacing)} model worker(s) stopped for overrunning their deadline"
                 ] if self.replacing else []
        if held:
            parts.append(f"{len(held)} model worker(s) held by one request for over {HELD_SECONDS:g} s of decoding")
        return f"{'; '.join(parts)} (of {workers}); requests queue until one is free"

    def _enforce_deadlines(self) -> list[worker_deadlines.Busy]:
        """SIGKILL every worker past its phase's deadline (worker_deadlines.py; MMS starts another)
        and remember the requests it held, to answer them. Returns the live workers held by one
        request's decoding for over HELD_SECONDS."""
        now = time.monotonic()
        self.replacing = {pid: at for pid, at in self.replacing.items() if now - at < self.unhealthy_seconds}
        for request in [r for r, b in self.overran.items() if now - b.deadline > self.request_timeout + 60]:
            del self.overran[request]  # answered by the front's own timeout instead
        records = worker_deadlines.read_all(self.run_dir)
        if any(now > b.deadline or now - b.since > HELD_SECONDS for b in records):
            # Never a pid we did not start; and a record whose worker died otherwise (killed by
            # someone else, out of memory) is stale: it held nothing any more.
            ours = {p.pid for p in mms.descendants(self.process.pid) if _alive(p)}
            for busy in [b for b in records if b.pid not in ours]:
                worker_deadlines.forget(self.run_dir, busy.pid)
                records.remove(busy)
        overdue = [b for b in records if now > b.deadline]
        for busy in overdue:
            worker_deadlines.forget(self.run_dir, busy.pid)
            for request in busy.requests:
                self.overran[request] = busy  # before the kill: MMS answers its requests at once
            try:
                os.kill(busy.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # it ended by itself in between: MMS replaces it all the same
            self.replacing[busy.pid] = now
            self.replacing_until = now + self.unhealthy_seconds
            log.error("a model worker (pid %d) spent over %.1f s on request(s) %s (%s); killed it, the model "
                      "server starts another", busy.pid, now - busy.since, ", ".join(busy.requests), busy.phase)
        return [b for b in records if b not in overdue and b.phase == worker_deadlines.DECODE
                and now - b.since > HELD_SECONDS]

    # --- requests --------------------------------------------------------------------------------
    async def _body(self, request: web.Request) -> bytes:
        """The body, refused with 413 before reading past the payload limit."""
        if request.content_length is not None and request.content_length > self.payload_limit:
            raise TooLarge(payload_too_large(request.content_length))
        body = bytearray()
        async for chunk in request.content.iter_any():
            body += chunk
            if len(body) > self.payload_limit:
                raise TooLarge(payload_too_large())
        return bytes(body)

    def _headers(self, request: web.Request) -> dict:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in NOT_FORWARDED}
        media = media_type(request.headers.get("Content-Type"))
        if media in FORM_TYPES:
            # MMS would parse such a body as a form and fail with a 500: it is the image itself
            # (`curl --data-binary @dog.jpg` without -H), so the handler decodes it as one.
            headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}
            headers["Content-Type"] = "application/x-image"
        elif media == "multipart/form-data":
            raise web.HTTPUnsupportedMediaType(reason="send the image bytes as the body with its Content-Type "
                                                      "(curl --data-binary @IMAGE -H 'Content-Type: image/jpeg'), "
                                                      "not as a form")
        return headers

    async def invocations(self, request: web.Request) -> web.Response:
        # MMS finds the model of a bare /invocations only among those named at start-up.
        return await self._invoke(request, "/invocations?model_name=model" if self.register else "/invocations")

    async def invoke_model(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.models:
            return json_error(404, f"model {name!r} is not loaded; load it with POST /models first")
        return await self._invoke(request, f"/models/{name}/invoke")

    async def _invoke(self, request: web.Request, path: str) -> web.Response:
        self.in_flight += 1
        try:
            if self.health.state == Health.DRAINING:
                return json_error(503, "the endpoint is shutting down")
            body, headers = await self._body(request), self._headers(request)
            if self.health.state == Health.STARTING:  # answered once the model is in, as MMS would
                try:
                    await asyncio.wait_for(self.health.ready.wait(), self.request_timeout)
                except asyncio.TimeoutError:
                    pass
            for _ in range(RETRIES):
                if self.health.state == Health.DOWN and time.monotonic() < self.replacing_until:
                    # Workers we killed for overrunning are being replaced: wait for one, as MMS's
                    # queue would, instead of failing good requests for the bad one's sake.
                    try:
                        await asyncio.wait_for(self.health.ready.wait(), self.replacing_until - time.monotonic())
                    except asyncio.TimeoutError:
                        pass
                if self.health.state not in (Health.READY, Health.BUSY):
                    return json_error(503, self.health.reason)
                request_id = str(next(self.request_ids))
                headers[worker_deadlines.REQUEST_HEADER] = request_id
                answer = await self._forward(request.app["inference"], "POST", path, body, headers)
                overran = self.overran.pop(request_id, None)
                if not (answer.status == 500 and WORKER_DIED in answer.body):
                    return answer
                if overran:  # its own worker was killed for it: not sent again
                    return self._overran(overran)
                # Predictions have no side effects: another worker answers it instead.
                log.warning("a model worker died during a request; sending it to another")
                await asyncio.sleep(0.2)
            return answer
        finally:
            self.in_flight -= 1

    @staticmethod
    def _overran(busy: worker_deadlines.Busy) -> web.Response:
        if busy.phase == worker_deadlines.DECODE:  # its images' cost: the client's to reduce
            return json_error(413, f"decoding this request took over {busy.deadline - busy.since:g} s "
                                   "(MAX_DECODE_SECONDS); its worker was stopped and replaced. Send fewer or "
                                   "smaller images")
        return json_error(504, f"the model did not answer within {busy.deadline - busy.since:g} s "
                               "(SAGEMAKER_MODEL_SERVER_TIMEOUT); its worker was stopped and replaced")

    async def _forward(self, session: aiohttp.ClientSession, method: str, path: str, body: bytes | None,
                       headers: dict, timeout: float | None = None) -> web.Response:
        timeout = timeout or self.request_timeout
        try:
            async with session.request(method, MMS_URL + path, data=body, headers=headers,
                                       timeout=aiohttp.ClientTimeout(total=timeout)) as r:
                answer = await r.read()
                out = {k: v for k, v in r.headers.items() if k.lower() not in NOT_FORWARDED}
                return web.Response(status=r.status, body=answer, headers=out)
        except asyncio.TimeoutError:
            return json_error(504, f"the model did not answer within {timeout:g} s")
        except aiohttp.ClientError as e:
            return json_error(503, f"the model server is not answering ({type(e).__name__})")

    # --- multi-model routes ----------------------------------------------------------------------
    async def load(self, request: web.Request) -> web.Response:
        """SageMaker's LoadModel: {"model_name", "url"}; the folder is staged as data (model_store)."""
        try:
            payload = await request.json()
            if not isinstance(payload, dict):
                raise model_store.Refused('the body must be {"model_name": NAME, "url": FOLDER}')
            name = model_store.model_name(payload.get("model_name"))
            folder = model_store.model_url(payload.get("url"))
        except ValueError:
            return json_error(400, 'the body must be JSON {"model_name": NAME, "url": FOLDER}')
        except model_store.Refused as e:
            log.warning("POST /models refused: %s", e)
            return json_error(400, str(e))
        async with self.load_lock:
            if name in self.models:
                return json_error(409, f"model {name!r} is already loaded")
            staged = self.run_dir / "models" / f"{name}-{time.monotonic_ns()}"
            try:  # a file of the folder that is a link to outside the models root: a 400 naming it
                model_store.stage(folder, staged, root=model_store.model_root())
            except model_store.Refused as e:
                shutil.rmtree(staged, ignore_errors=True)
                log.warning("POST /models refused: %s", e)
                return json_error(400, str(e))
            answer = await self._forward(request.app["management"], "POST", "/models",
                                         json.dumps({"model_name": name, "url": str(staged), **self.batching}).encode(),
                                         {"Content-Type": JSON_TYPE}, timeout=max(300.0, self.request_timeout))
            if answer.status == 200:
                failed = await self._load_failure(name)
                if failed:  # MMS registered it, but its workers could not load it
                    await self._forward(request.app["management"], "DELETE", f"/models/{name}", None, {})
                    answer = failed
            if answer.status == 200:
                self.models[name] = (payload["url"], staged)
            else:
                shutil.rmtree(staged, ignore_errors=True)
                model_state.forget(self.run_dir, name)
            return answer

    async def _load_failure(self, name: str) -> web.Response | None:
        """The error for a model whose workers reported a failed load (MMS itself answers 200 and
        then 500 to every request): 507 when memory or disk ran short, as SageMaker expects so that
        it can unload others and retry, 400 for an artifact this image cannot load, else 500."""
        deadline = time.monotonic() + 5  # the workers have reported by the time MMS answers; a margin
        while True:
            loaded, failure = model_state.read_cause(self.run_dir, name)
            if failure or loaded or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        if not failure:
            return None
        cause, reason = failure
        status = {model_state.RESOURCES: 507, model_state.ARTIFACT: 400}.get(cause, 500)
        log.warning("model %s failed to load (%d): %s", name, status, reason)
        return json_error(status, f"model {name!r} failed to load: {reason}")

    async def list_models(self, request: web.Request) -> web.Response:
        return web.json_response({"models": [{"modelName": n, "modelUrl": url} for n, (url, _) in self.models.items()]})

    async def describe(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.models:
            return json_error(404, f"model {name!r} is not loaded")
        return web.json_response({"modelName": name, "modelUrl": self.models[name][0]})

    async def unload(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        async with self.load_lock:
            if name not in self.models:
                return json_error(404, f"model {name!r} is not loaded")
            answer = await self._forward(request.app["management"], "DELETE", f"/models/{name}", None, {})
            if answer.status == 200:
                shutil.rmtree(self.models.pop(name)[1], ignore_errors=True)
                model_state.forget(self.run_dir, name)
            return answer

    async def register_model(self, session: aiohttp.ClientSession) -> None:
        """The single model, registered with batching once MMS's management socket answers."""
        query = urlencode({"model_name": "model", "url": str(self.register), "initial_workers": mms.workers(),
                           **self.batching})
        deadline = time.monotonic() + 120
        while not self.stopped.is_set():
            answer = await self._forward(session, "POST", f"/models?{query}", None, {}, timeout=300)
            if answer.status == 200:
                log.info("model registered with batch_size=%(batch_size)d, max_batch_delay=%(max_batch_delay)d ms",
                         self.batching)
                self.registered.set()  # only now can /invocations?model_name=model find it
                return
            if answer.status != 503 or time.monotonic() > deadline:  # 503: the socket is not up yet
                return self.stop(f"the model server refused the model ({answer.status}): {answer.text}")
            await asyncio.sleep(0.1)

    # --- running ---------------------------------------------------------------------------------
    def stop(self, problem: str | None = None) -> None:
        if problem and not self.problem:
            self.problem = problem
        self.stopped.set()

    async def serve(self, host: str, port: int) -> str | None:
        """Run until SIGTERM/SIGINT or a fatal problem; return the problem (None after a signal)."""
        app = self.app()
        # One session per MMS socket; no connection limit (MMS queues requests itself).
        for key, sock in (("inference", mms.inference_socket(self.run_dir)),
                          ("management", mms.management_socket(self.run_dir))):
            app[key] = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sock), limit=0))
        runner = JsonErrorRunner(app, access_log=None, handle_signals=False, shutdown_timeout=self.drain_seconds)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port, reuse_address=True).start()
        except OSError as e:
            await runner.cleanup()
            return f"cannot listen on {host}:{port}: {e.strerror or e}"
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._signalled, sig)
        tasks = [asyncio.create_task(self.watch(app["inference"]))]
        if self.register:
            tasks.append(asyncio.create_task(self.register_model(app["management"])))
        for task in tasks:
            task.add_done_callback(self._task_ended)
        await self.stopped.wait()
        for task in tasks:
            task.cancel()
        self.health.state, self.health.reason = Health.DRAINING, "the endpoint is shutting down"
        self.health.ready.clear()
        if self.in_flight:
            log.info("draining %d request(s) in flight (up to %g s)", self.in_flight, self.drain_seconds)
        await runner.cleanup()  # stops accepting, waits for requests in flight, closes idle connections
        for key in ("inference", "management"):
            await app[key].close()
        return self.problem

    def _task_ended(self, task: asyncio.Task) -> None:
        """A watch that dies leaves /ping frozen and deadlines unenforced: stop instead, with the reason."""
        if not task.cancelled() and task.exception() is not None:
            log.error("the front's %s failed: %r", task.get_coro().__name__, task.exception())
            self.stop(f"the front's {task.get_coro().__name__} failed: {task.exception()!r}")

    def _signalled(self, signum: int) -> None:
        log.info("signal %d: stopping", signum)
        self.stop()
