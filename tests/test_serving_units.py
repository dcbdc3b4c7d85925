"""Serving's pieces in-process: what a model folder may be, the JVM's bounds, Accept, the request budget."""
import asyncio
import base64
import dataclasses
import io
import json
import os
import subprocess
import time

import psutil
import pytest
from PIL import Image
from sagemaker_inference.errors import GenericInferenceToolkitError

from image_classifier.serving import environment, inference, mms, model_store

MIB = 1024 * 1024


@pytest.fixture
def model(small_model):
    return small_model


def png(size, mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, "PNG")
    return buf.getvalue()


def jpeg(size) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, "red").save(buf, "JPEG")
    return buf.getvalue()


def status(call):
    with pytest.raises(GenericInferenceToolkitError) as e:
        call()
    return e.value.status_code, e.value.message


def instances(*bodies) -> bytes:
    return json.dumps({"instances": [base64.b64encode(b).decode() for b in bodies]}).encode()


@pytest.fixture(autouse=True)
def fresh_model_root():
    """model_root() is resolved once per process: each test sees its own SAGEMAKER_BASE_DIR."""
    model_store.model_root.cache_clear()
    yield
    model_store.model_root.cache_clear()


def model_folder(folder):
    folder.mkdir(parents=True)
    for name in model_store.USED:
        (folder / name).write_text(name)
    return folder


def test_model_urls_are_local_folders_under_the_root(tmp_path, monkeypatch):
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(tmp_path))
    (tmp_path / "models" / "a" / "model").mkdir(parents=True)
    (tmp_path / "other").mkdir()
    assert model_store.model_url(str(tmp_path / "models" / "a" / "model")) == tmp_path / "models" / "a" / "model"
    for url in ["http://host/m.mar", "https://host/x", "s3://bucket/model.tar.gz", f"file://{tmp_path}/models/a",
                str(tmp_path / "other"), f"{tmp_path}/models/../other", "models/a/model", "", None, 3,
                str(tmp_path / "models" / "missing")]:
        with pytest.raises(model_store.Refused):
            model_store.model_url(url)


@pytest.mark.parametrize("name, ok", [("dogs", True), ("m0123abc", True), ("a.b-c_d", True), ("", False),
                                      ("../x", False), ("a/b", False), (".hidden", False), ("x" * 129, False),
                                      (None, False)])
def test_model_names(name, ok):
    if ok:
        assert model_store.model_name(name) == name
    else:
        with pytest.raises(model_store.Refused):
            model_store.model_name(name)


def test_staging_links_only_the_two_files_the_loader_reads(tmp_path, caplog):
    src = tmp_path / "artifact"
    (src / "MAR-INF").mkdir(parents=True)
    (src / "code").mkdir()
    for name in ("model.pt", "model.json", "MAR-INF/MANIFEST.json", "handler.py", "code/requirements.txt",
                 "lib.so", "notes.txt"):
        (src / name).write_text("x")
    staged = model_store.stage(src, tmp_path / "run" / "model")
    assert sorted(p.name for p in staged.iterdir()) == ["model.json", "model.pt"]
    assert all((staged / n).resolve() == (src / n).resolve() for n in ("model.pt", "model.json"))
    assert model_store.foreign_files(src) == ["MAR-INF", "code", "handler.py", "lib.so"]
    [record] = [r for r in caplog.records if "ignoring" in r.getMessage()]
    assert "MAR-INF" in record.getMessage() and "handler.py" in record.getMessage()
    clean = tmp_path / "clean"
    clean.mkdir()
    (clean / "model.pt").write_text("x")
    caplog.clear()
    model_store.stage(clean, tmp_path / "run" / "clean")
    assert not [r for r in caplog.records if "ignoring" in r.getMessage()]


def test_a_model_folder_that_is_a_link_to_outside_the_root_is_refused_naming_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(tmp_path))
    root = tmp_path / "models"
    root.mkdir()
    outside = model_folder(tmp_path / "elsewhere" / "model")
    (root / "evil").symlink_to(outside)  # the folder itself
    (root / "parent").symlink_to(outside.parent)  # a folder above it
    for url in [root / "evil", root / "parent" / "model"]:
        with pytest.raises(model_store.Refused) as e:
            model_store.model_url(str(url))
        assert str(url) in str(e.value) and f"resolves to {outside}" in str(e.value)
    with pytest.raises(model_store.Refused) as e:  # stage checks the folder too, and stages nothing
        model_store.stage(root / "evil", tmp_path / "run" / "evil", root=model_store.model_root())
    assert str(root / "evil") in str(e.value) and not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", model_store.USED)
def test_a_model_file_that_is_a_link_to_outside_the_root_is_refused_naming_it(tmp_path, monkeypatch, name):
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(tmp_path))
    outside = model_folder(tmp_path / "elsewhere")
    folder = model_folder(tmp_path / "models" / "m" / "model")
    (folder / name).unlink()
    (folder / name).symlink_to(outside / name)
    assert model_store.model_url(str(folder)) == folder  # the folder itself is inside
    with pytest.raises(model_store.Refused) as e:
        model_store.stage(folder, tmp_path / "run" / "m", root=model_store.model_root())
    assert str(folder / name) in str(e.value) and f"resolves to {outside / name}" in str(e.value)
    assert not (tmp_path / "run").exists()
    # A single model (the user's own /opt/ml/model: no root) may link anywhere.
    staged = model_store.stage(folder, tmp_path / "run" / "single")
    assert (staged / name).resolve() == outside / name


def test_links_that_stay_inside_the_root_are_accepted(tmp_path, monkeypatch):
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(tmp_path))
    root = tmp_path / "models"
    real = model_folder(root / "real" / "model")
    (root / "alias").symlink_to(real)  # a folder link within the root
    shared = model_folder(root / "shared" / "model")
    (real / "model.pt").unlink()
    (real / "model.pt").symlink_to(shared / "model.pt")  # a file link to another model's file
    folder = model_store.model_url(str(root / "alias"))
    assert folder == real
    staged = model_store.stage(folder, tmp_path / "run" / "m", root=model_store.model_root())
    assert (staged / "model.pt").readlink() == shared / "model.pt"
    assert (staged / "model.json").readlink() == real / "model.json"


def test_a_relative_base_dir_is_resolved_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", "base")
    folder = model_folder(tmp_path / "base" / "models" / "m" / "model")
    assert model_store.model_root() == tmp_path / "base" / "models"  # absolute
    assert model_store.model_url(str(folder)) == folder  # SageMaker sends the absolute path
    staged = model_store.stage(folder, tmp_path / "run" / "m", root=model_store.model_root())
    assert sorted(p.name for p in staged.iterdir()) == ["model.json", "model.pt"]
    monkeypatch.chdir(tmp_path / "run")  # a later working directory changes nothing: resolved once
    assert model_store.model_root() == tmp_path / "base" / "models"
    assert model_store.model_url(str(folder)) == folder


def test_a_refused_staging_answers_400_and_leaves_no_staged_folder(tmp_path, monkeypatch):
    """front.load: stage()'s Refused (a model.pt linked to outside the root) is a JSON 400 naming it."""
    import asyncio

    from image_classifier.serving import front
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(tmp_path))
    folder = model_folder(tmp_path / "models" / "m" / "model")
    (folder / "model.pt").unlink()
    (folder / "model.pt").symlink_to(model_folder(tmp_path / "elsewhere") / "model.pt")
    run_dir = tmp_path / "run"
    f = front.Front(run_dir, None, multi_model=True, payload_limit=1, request_timeout=1, drain_seconds=1,
                    unhealthy_seconds=1, started=0)

    class Request:
        async def json(self):
            return {"model_name": "m", "url": str(folder)}
    answer = asyncio.run(f.load(Request()))
    assert answer.status == 400 and str(folder / "model.pt") in json.loads(answer.text)["message"]
    assert not (run_dir / "models").exists() or not any((run_dir / "models").iterdir())
    assert f.models == {}


def test_the_jvm_heap_follows_the_container_memory(monkeypatch):
    assert mms.jvm_heap_mib(8 * 1024 * MIB) == 256  # ml.m5.large
    assert mms.jvm_heap_mib(1024 * MIB) == 256 and mms.jvm_heap_mib(256 * 1024 * MIB) == 512
    monkeypatch.setattr(mms, "memory_limit", lambda: 16 * 1024 * MIB)
    assert mms.vmargs("-XX:-UseContainerSupport") == "-XX:-UseContainerSupport -Xmx512m -XX:+ExitOnOutOfMemoryError"
    assert mms.vmargs("-Xmx2g") == "-Xmx2g -XX:+ExitOnOutOfMemoryError"  # the user's bound wins
    assert 0 < mms.memory_limit()


def test_the_workers_a_registered_model_gets(monkeypatch):
    monkeypatch.setenv("SAGEMAKER_MODEL_SERVER_WORKERS", "3")
    assert mms.workers() == 3
    monkeypatch.delenv("SAGEMAKER_MODEL_SERVER_WORKERS")
    monkeypatch.setattr(mms.shutil, "which", lambda name: None)  # no GPU: one per CPU, as MMS counts them
    assert mms.workers() == len(mms.os.sched_getaffinity(0))


def test_mms_is_told_the_workers_the_front_counts(tmp_path, monkeypatch):
    monkeypatch.delenv("SAGEMAKER_MODEL_SERVER_WORKERS", raising=False)
    monkeypatch.setattr(mms, "workers", lambda: 5)
    assert "default_workers_per_model=5\n" in mms.config(tmp_path, MIB).read_text()


def test_mms_loads_no_model_by_itself_when_serve_registers_it(tmp_path, monkeypatch):
    monkeypatch.delenv("SAGEMAKER_MULTI_MODEL", raising=False)
    assert "load_models=ALL\n" in mms.config(tmp_path, MIB).read_text()
    assert "load_models=\n" in mms.config(tmp_path, MIB, load_models=False).read_text()  # not every folder of /


@pytest.mark.parametrize("accept", [None, "", "application/json", "*/*", "application/*", "application/json, */*",
                                    "application/json; charset=utf-8", "text/html;q=0.9, application/json;q=0.5",
                                    "APPLICATION/JSON"])
def test_accept_forms_that_allow_json(accept):
    assert inference.answer_type(accept) == "application/json"


@pytest.mark.parametrize("accept", ["text/csv", "application/json;q=0", "image/png, text/*", "application/json;q=x"])
def test_accept_forms_without_json_are_406(accept):
    assert status(lambda: inference.answer_type(accept))[0] == 406


def test_the_request_budget_refuses_before_decoding_any_image(model, monkeypatch):
    decoded = []
    monkeypatch.setattr(inference, "to_rgb", lambda *a, **k: decoded.append(1))
    body = instances(*[png((5000, 5000), "1")] * 4)  # 100 Mpx in all, 25 each
    code, message = status(lambda: inference.input_fn(body, "application/json", model=model))
    assert code == 413 and "100000000 pixels" in message and "MAX_REQUEST_PIXELS" in message
    assert decoded == []


def test_jpegs_count_at_the_scale_they_are_decoded(model, monkeypatch):
    monkeypatch.setenv("MAX_REQUEST_PIXELS", "100000")
    big = jpeg((2000, 1500))  # 3 Mpx on disk; drafted to 1/8 for a 36 px resize: 250x188
    assert len(inference.input_fn(instances(big, big), "application/json", model=model).images) == 2
    assert status(lambda: inference.input_fn(png((400, 400)), "image/png", model=model))[0] == 413


def test_the_decode_time_budget_is_checked_between_images(model, monkeypatch):
    monkeypatch.setenv("MAX_DECODE_SECONDS", "0.000001")
    code, message = status(lambda: inference.input_fn(instances(jpeg((40, 40)), jpeg((40, 40))), "application/json",
                                                       model=model))
    assert code == 413 and "MAX_DECODE_SECONDS" in message and "instances[1]" in message


def test_base64_with_line_breaks_and_deep_json(model):
    wrapped = base64.encodebytes(jpeg((40, 40))).decode()
    assert "\n" in wrapped.strip()
    body = json.dumps({"instances": [wrapped, {"b64": " " + wrapped}]}).encode()
    assert len(inference.input_fn(body, "application/json", model=model).images) == 2
    deep = ("[" * 100_000 + "]" * 100_000).encode()
    assert status(lambda: inference.input_fn(deep, "application/json", model=model)) == \
        (400, "body is not valid JSON: nested too deeply")


def test_the_front_does_not_import_torch():
    """serve's own process only moves bytes: torch would cost it 250 MiB and a second of start-up."""
    import subprocess
    import sys
    code = "import sys, image_classifier.serving.server; print(sorted({'torch', 'PIL'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(__import__("conftest").CONTAINER))
    assert out.stdout.strip() == "[]"


def test_a_failed_multi_model_load_answers_507_for_memory_or_disk_else_400_or_500(tmp_path, monkeypatch):
    """POST /models' status from what the workers reported (model_state), as SageMaker expects:
    507 lets it unload other models and retry."""
    import asyncio
    import errno

    from image_classifier.artifact import ArtifactError
    from image_classifier.serving import front, model_state
    from image_classifier.serving.handler_service import cause
    assert cause(MemoryError()) == cause(OSError(errno.ENOSPC, "No space left on device")) == model_state.RESOURCES
    assert cause(RuntimeError("CUDA out of memory")) == model_state.RESOURCES
    assert cause(ArtifactError("no model.json")) == model_state.ARTIFACT and cause(KeyError("x")) == model_state.OTHER
    monkeypatch.setenv(environment.STATE_DIR, str(tmp_path))
    f = front.Front(tmp_path, None, multi_model=True, payload_limit=1, request_timeout=1, drain_seconds=1,
                    unhealthy_seconds=1, started=0)
    for name, kind, status in [("a", model_state.RESOURCES, 507), ("b", model_state.ARTIFACT, 400),
                               ("c", model_state.OTHER, 500)]:
        model_state.report_failed("why", name, kind)
        answer = asyncio.run(f._load_failure(name))
        assert answer.status == status and f"model '{name}' failed to load: why" in answer.text
    model_state.report_loaded("d")
    assert asyncio.run(f._load_failure("d")) is None
    model_state.forget(tmp_path, "a")
    assert model_state.read(tmp_path, "a") == (False, None)


def test_every_error_has_mms_json_shape_and_names_the_limit(monkeypatch):
    from image_classifier.serving import responses
    assert json.loads(responses.error_body(413, "too big")) == {"code": 413, "type": "RequestEntityTooLarge",
                                                                "message": "too big"}
    assert responses.media_type(" Image/JPEG; charset=x") == "image/jpeg" and responses.media_type(None) == ""
    monkeypatch.setenv("MAX_PAYLOAD_BYTES", "100")
    assert responses.payload_too_large(150) == "body is 150 bytes; the limit is 100 (MAX_PAYLOAD_BYTES)"
    assert responses.payload_too_large() == "body is over 100 bytes; the limit is 100 (MAX_PAYLOAD_BYTES)"


# --- worker deadlines and stopping the process tree ------------------------------------------------
def test_a_worker_announces_each_phase_with_its_deadline_and_clears_it(tmp_path, monkeypatch):
    from image_classifier.serving import worker_deadlines
    monkeypatch.setenv("SERVE_STATE_DIR", str(tmp_path))
    worker_deadlines.mark(["7"], worker_deadlines.DECODE, 5)
    [busy] = worker_deadlines.read_all(tmp_path)
    assert (busy.pid, busy.requests, busy.phase) == (os.getpid(), ("7",), "decode")
    assert busy.deadline - busy.since == pytest.approx(5) and busy.since <= time.monotonic()
    worker_deadlines.mark(["7", "8"], worker_deadlines.PREDICT, 60)
    assert [b.requests for b in worker_deadlines.read_all(tmp_path)] == [("7", "8")]
    (tmp_path / "busy.123").write_text("{half")  # a record being written, or garbage: skipped
    (tmp_path / "busy.notapid").write_text("{}")
    assert len(worker_deadlines.read_all(tmp_path)) == 1
    worker_deadlines.clear()
    assert [b.pid for b in worker_deadlines.read_all(tmp_path)] == []


def test_stop_tree_ends_a_process_whose_parent_died_before_it(tmp_path):
    """MMS's listener forks its workers; a worker whose listener died is no longer in the launcher's
    tree but still in MMS's process group, which stop_tree ends too (issue 23: busy workers outlived
    `serve`)."""
    from image_classifier.serving import mms
    pid_file = tmp_path / "orphan.pid"
    # The subshell starts a sleeper and exits: the sleeper is reparented out of the launcher's tree.
    launcher = subprocess.Popen(["bash", "-c", f"(sleep 600 & echo $! > {pid_file}); exec sleep 600"],
                                start_new_session=True)
    deadline = time.monotonic() + 10
    while not pid_file.exists() or not pid_file.read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    orphan = psutil.Process(int(pid_file.read_text()))
    assert orphan.pid not in {p.pid for p in mms.descendants(launcher.pid)}
    mms.stop_tree(launcher, timeout=2)
    assert launcher.poll() is not None
    gone, alive = psutil.wait_procs([orphan], timeout=5)
    assert alive == []


def test_the_front_kills_only_its_own_overdue_workers_and_drops_stale_records(tmp_path):
    """Records (worker_deadlines) of: a worker of ours past its deadline (killed, its request
    remembered), one of ours within it, a pid that is not ours past its deadline (this test's own:
    never signalled), and a worker that died otherwise (stale: not counted as holding anything)."""
    import json as json_module
    from image_classifier.serving import worker_deadlines
    from image_classifier.serving.front import Front
    tree = subprocess.Popen(["bash", "-c", "sleep 600 & sleep 600 & wait"], start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while len(mms.descendants(tree.pid)) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        overdue, busy = mms.descendants(tree.pid)
        dead = subprocess.Popen(["true"])
        dead.wait()
        now = time.monotonic()
        for pid, request, since, until in [(overdue.pid, "1", now - 9, now - 1), (busy.pid, "2", now - 3, now + 60),
                                           (os.getpid(), "3", now - 9, now - 1), (dead.pid, "4", now - 3, now + 60)]:
            (tmp_path / f"busy.{pid}").write_text(json_module.dumps(
                {"requests": [request], "phase": "decode", "since": since, "deadline": until}))
        front = Front(tmp_path, tree, multi_model=False, payload_limit=1, request_timeout=1, drain_seconds=1,
                      unhealthy_seconds=30, started=now)
        front.workers_per_model = 2
        held = front._enforce_deadlines()
        assert set(front.replacing) == {overdue.pid} and set(front.overran) == {"1"}
        assert overdue.wait(5) is not None or not overdue.is_running()
        assert busy.is_running() and psutil.pid_exists(os.getpid())
        assert [b.pid for b in held] == [busy.pid]  # the dead one's record no longer counts
        assert sorted(b.pid for b in worker_deadlines.read_all(tmp_path)) == [busy.pid]
        # One worker being replaced and the other held: none can take a request, /ping must say so.
        assert "replacing the 1 model worker(s) stopped" in front._unavailable(held)
        assert "1 model worker(s) held by one request for over 2 s" in front._unavailable(held)
        front.replacing.clear()
        assert front._unavailable(held) is None  # replaced: one of two free
    finally:
        mms.stop_tree(tree, timeout=2)


def _front(tmp_path, workers: int = 1):
    from image_classifier.serving.front import Front
    front = Front(tmp_path, subprocess.Popen(["true"]), multi_model=False, payload_limit=1, request_timeout=1,
                  drain_seconds=1, unhealthy_seconds=30, started=time.monotonic())
    front.process.wait()
    front.workers_per_model = workers
    return front


def test_a_long_forward_is_not_held_and_an_overrun_record_expires(tmp_path, monkeypatch):
    """A forward of many images is ordinary work: only decoding over HELD_SECONDS turns /ping 503."""
    from image_classifier.serving import front as front_module
    from image_classifier.serving import worker_deadlines
    now = time.monotonic()
    record = worker_deadlines.Busy(os.getpid(), ("7",), worker_deadlines.PREDICT, now - 5, now + 60)
    monkeypatch.setattr(worker_deadlines, "read_all", lambda run_dir: [record])
    monkeypatch.setattr(front_module.mms, "descendants", lambda pid: [psutil.Process(os.getpid())])
    front = _front(tmp_path)
    assert front._enforce_deadlines() == [] and front._unavailable([]) is None
    record = dataclasses.replace(record, phase=worker_deadlines.DECODE)
    assert [b.requests for b in front._enforce_deadlines()] == [("7",)]
    front.overran["old"] = dataclasses.replace(record, deadline=now - 120)
    front._enforce_deadlines()
    assert "old" not in front.overran  # answered by the front's own timeout long ago


def test_a_worker_that_ends_before_its_kill_is_still_replaced(tmp_path, monkeypatch):
    from image_classifier.serving import front as front_module
    from image_classifier.serving import worker_deadlines
    now = time.monotonic()
    record = worker_deadlines.Busy(os.getpid(), ("8",), worker_deadlines.DECODE, now - 9, now - 1)
    monkeypatch.setattr(worker_deadlines, "read_all", lambda run_dir: [record])
    monkeypatch.setattr(worker_deadlines, "forget", lambda run_dir, pid: None)
    monkeypatch.setattr(front_module.mms, "descendants", lambda pid: [psutil.Process(os.getpid())])

    def gone(pid, sig):
        raise ProcessLookupError(pid)
    monkeypatch.setattr(front_module.os, "kill", gone)
    front = _front(tmp_path)
    assert front._enforce_deadlines() == [] and set(front.replacing) == {os.getpid()}
    assert front.overran["8"] is record


def test_a_failed_watch_stops_serve_with_the_reason(tmp_path):
    front = _front(tmp_path)

    async def watch():
        raise RuntimeError("boom")

    async def run():
        task = asyncio.create_task(watch())
        task.add_done_callback(front._task_ended)
        await asyncio.wait_for(front.stopped.wait(), 5)
    asyncio.run(run())
    assert front.problem == "the front's watch failed: RuntimeError('boom')"


def test_replaced_workers_are_counted_back_as_the_model_server_reports_them(tmp_path):
    """Two of three workers killed: "Partial Healthy" means at least one is back (so at most two
    still being replaced, the oldest counted back first); "Healthy" means all are."""
    front = _front(tmp_path, workers=3)
    front.replacing = {101: 1.0, 102: 2.0, 103: 3.0}
    front._replaced("Partial Healthy")
    assert front.replacing == {102: 2.0, 103: 3.0}
    assert front._unavailable([]) is None  # one of three free
    front._replaced("Healthy")
    assert front.replacing == {}
