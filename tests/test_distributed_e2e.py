"""The real `train` on several hosts of one machine: one /opt/ml tree and one process per host,
torch.distributed (gloo) between them on 127.0.0.1, against 1-host runs of the same job."""
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import CONTAINER, FAST_HP, failure_reason, program_env, read_json, run_train
from image_classifier import metrics
from launch.local import programs

pytestmark = pytest.mark.slow

# fp32, so that 1 host and 2 hosts differ only by the order of the gradient sums; the head on
# decoded, augmented images (cached features have their own test below).
# With the average of the weights (ema-decay): each rank keeps its own, equal to the others' and to one host's.
HP = {**FAST_HP, "precision": "fp32", "cache-features": False, "log-interval": 1, "ema-decay": 0.9}
TOLERANCE = 1e-4  # largest weight difference allowed between a 1-host and a 2-host run (measured: 9e-6)
EXIT_TIMEOUT = 120  # a host must end this long after its peer dies (distributed-timeout is shorter still)


class Hosts:
    """N `train` processes, one per /opt/ml tree, started together; stopped by pid."""

    def __init__(self, trees, **env):
        self.trees = trees
        shared = programs.hosts_env(len(trees))
        self.logs = [open(tree / "train.log", "w") for tree in trees]
        self.processes = [subprocess.Popen(programs.program("train"), env=program_env(tree, **shared, **env),
                                           stdout=log, stderr=subprocess.STDOUT) for tree, log in zip(trees, self.logs)]

    def wait(self, timeout=600) -> list[int]:
        codes = [p.wait(timeout) for p in self.processes]
        for log in self.logs:
            log.close()
        return codes

    def output(self, i: int) -> str:
        return (self.trees[i] / "train.log").read_text()

    def wait_for(self, i: int, text: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output(i):
            assert all(p.poll() is None for p in self.processes), [self.output(k) for k in range(len(self.trees))]
            assert time.monotonic() < deadline, self.output(i)
            time.sleep(0.05)

    def kill_all(self):
        for p in self.processes:
            if p.poll() is None:
                p.kill()
        self.wait()


def hosts(tmp_path, data, count, hp, name="job", **env) -> Hosts:
    return Hosts(programs.make_hosts(tmp_path / name, count, data, hp), **env)


def weights(tree):
    return torch.load(tree / "model" / "model.pt", weights_only=True)


def largest_difference(a, b) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def one_host(tmp_path_factory, tiny_data):
    base = programs.make_tree(tmp_path_factory.mktemp("one-host"), tiny_data, {**HP, "epochs": 3})
    result = run_train(base)
    assert result.returncode == 0, result.stdout + result.stderr
    return base, result.stdout


def test_two_hosts_train_the_same_steps_as_one(tmp_path, tiny_data, one_host):
    one, one_log = one_host
    job = hosts(tmp_path, tiny_data, 2, {**HP, "epochs": 3, "debug-dir": "data/debug"})
    assert job.wait() == [0, 0], [job.output(0), job.output(1)]
    leader, other = job.trees
    two_log = job.output(0)
    # Same optimizer steps (36 images, global batch 8: 4 a epoch) and epochs, printed once
    steps = [line for line in two_log.splitlines() if line.startswith("epoch ") and " step " in line]
    assert steps == [line for line in steps if "/4 " in line] and len(steps) == 12
    assert len(steps) == len([line for line in one_log.splitlines() if line.startswith("epoch ") and " step " in line])
    for metric in ("valid:accuracy", "valid:ema_accuracy", "valid:ema_loss"):
        assert metrics.parse(two_log)[metric] == pytest.approx(metrics.parse(one_log)[metric], abs=1e-4)
    assert len(metrics.parse(two_log)["valid:ema_accuracy"]) == 3
    assert metrics.parse(job.output(1)) == {} or all(not v for v in metrics.parse(job.output(1)).values())
    # Validation and test over every image exactly once
    final = read_json(leader / "output" / "data" / "metrics.json")
    assert [h["valid_images"] for h in final["history"]] == [12, 12, 12] and final["test_images"] == 12
    # Only the leader writes; every host says where it stands
    assert sorted(p.name for p in (leader / "model").iterdir()) == ["model.json", "model.pt"]
    assert list((other / "model").iterdir()) == [] and list((other / "checkpoints").iterdir()) == []
    assert not (other / "output" / "data").exists()  # no metrics, profile or Debugger tensors
    data = leader / "output" / "data"
    assert (data / "debug" / "index").is_dir() and (data / "profile").is_dir()
    assert "rank 0 of 2 (host algo-1" in two_log and "rank 1 of 2 (host algo-2" in job.output(1)
    assert largest_difference(weights(one), weights(leader)) < TOLERANCE


def test_cached_features_are_computed_in_shards(tmp_path, tiny_data):
    hp = {**HP, "cache-features": True, "epochs": 2}
    base = programs.make_tree(tmp_path / "one", tiny_data, hp)
    assert run_train(base).returncode == 0
    job = hosts(tmp_path, tiny_data, 2, hp)
    assert job.wait() == [0, 0], [job.output(0), job.output(1)]
    assert "18 images through the backbone" in job.output(1)  # half of train's 36
    assert largest_difference(weights(base), weights(job.trees[0])) < TOLERANCE


@pytest.mark.parametrize("dies", [1, 0], ids=["other-host-dies", "leader-dies"])
def test_a_host_that_dies_ends_the_others_with_a_reason(tmp_path, tiny_data, dies):
    job = hosts(tmp_path, tiny_data, 2, {**HP, "epochs": 500, "distributed-timeout": 60})
    try:
        job.wait_for(0, "epoch 1 step 2/")
        job.processes[dies].kill()  # SIGKILL: no goodbye, as when an instance is lost
        survivor = 1 - dies
        code = job.processes[survivor].wait(EXIT_TIMEOUT)
    finally:
        job.kill_all()
    assert code == 1, job.output(survivor)
    reason = failure_reason(job.trees[survivor])
    assert reason.startswith(f"rank {survivor} of 2 (host algo-{survivor + 1}, local rank 0) lost the other "
                             "processes of the job"), reason
    assert len((job.trees[survivor] / "output" / "failure").read_text().splitlines()) == 1


def test_sigterm_on_every_host_checkpoints_once_and_resumes_on_two_or_one(tmp_path, tiny_data, one_host):
    one, _ = one_host
    hp = {**HP, "epochs": 3}
    job = hosts(tmp_path, tiny_data, 2, hp)
    try:
        job.wait_for(0, "epoch 1 step 1/")
        for p in job.processes:
            p.send_signal(signal.SIGTERM)
        codes = job.wait(EXIT_TIMEOUT)
    finally:
        job.kill_all()
    assert codes == [143, 143], [job.output(0), job.output(1)]
    leader, other = job.trees
    assert (leader / "checkpoints" / "checkpoint.pt").exists() and not list((other / "checkpoints").iterdir())
    stopped_at = torch.load(leader / "checkpoints" / "checkpoint.pt", weights_only=True)["progress"]
    # on 1 host: a new tree with the leader's checkpoint (SageMaker restores it from S3 the same way)
    single = programs.make_tree(tmp_path / "single", tiny_data, hp)
    shutil.copytree(leader / "checkpoints", single / "checkpoints", dirs_exist_ok=True)
    # on 2 hosts: the same trees
    again = Hosts(job.trees)
    assert again.wait() == [0, 0], [again.output(0), again.output(1)]
    resumed = run_train(single)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in again.output(0) and "resuming from" in resumed.stderr
    for tree in (leader, single):
        assert largest_difference(weights(one), weights(tree)) < TOLERANCE, (tree, stopped_at)


def test_a_global_batch_that_does_not_split_fails_every_host_alike(tmp_path, tiny_data):
    job = hosts(tmp_path, tiny_data, 2, {**HP, "batch-size": 7})
    assert job.wait() == [1, 1]
    for tree in job.trees:
        assert failure_reason(tree).startswith("batch-size 7 is the global batch: it must divide evenly over the "
                                               "job's 2 processes")


def test_several_processes_on_one_host_with_torchrun(tmp_path, tiny_data, one_host):
    """What a multi-GPU instance runs (one process per GPU), here with 2 CPU processes and gloo."""
    one, _ = one_host
    base = programs.make_tree(tmp_path / "ml", tiny_data, {**HP, "epochs": 3})
    result = run_train(base, TRAIN_PROCESSES_PER_HOST=2, **programs.hosts_env(2))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "starting 2 training processes on host" in result.stderr
    assert "rank 1 of 2" in result.stderr and "local rank 1" in result.stderr
    assert largest_difference(weights(one), weights(base)) < TOLERANCE


def test_sigterm_reaches_the_processes_torchrun_started(tmp_path, tiny_data):
    base = programs.make_tree(tmp_path / "ml", tiny_data, {**HP, "epochs": 500})
    job = Hosts([base], TRAIN_PROCESSES_PER_HOST=2)
    try:
        job.wait_for(0, "epoch 1 step 1/")
        job.processes[0].send_signal(signal.SIGTERM)  # what SageMaker sends the container's first process
        codes = job.wait(EXIT_TIMEOUT)
    finally:
        job.kill_all()
    assert codes == [143], job.output(0)
    assert (base / "checkpoints" / "checkpoint.pt").exists() and not (base / "output" / "failure").exists()


def test_a_stop_under_torchrun_with_loader_workers_alive_keeps_the_checkpoint_and_the_best_model(tmp_path, tiny_data):
    """torchrun stops a rank by signalling its whole process group (os.killpg), which holds the
    rank's DataLoader workers too: they must outlive the signal until the rank has saved its work."""
    hp = {**HP, "epochs": 500, "num-workers": 2, "cache-features": False, "mixup": 0.4, "cutmix": 1.0}  # mixed
    base = programs.make_tree(tmp_path / "ml", tiny_data, hp)
    job = Hosts([base], TRAIN_PROCESSES_PER_HOST=2)
    try:
        job.wait_for(0, "epoch 2 step 1/")  # a best model exists; the loaders' workers are alive
        job.processes[0].send_signal(signal.SIGTERM)
        codes = job.wait(EXIT_TIMEOUT)
    finally:
        job.kill_all()
    output = job.output(0)
    assert codes == [143], output
    assert not (base / "output" / "failure").exists(), (base / "output" / "failure").read_text()
    assert "killed by signal" not in output and "internal error" not in output, output
    assert "mixing training batches: mixup 0.4, cutmix 1" in output
    assert (base / "checkpoints" / "checkpoint.pt").exists() and (base / "model" / "model.pt").exists()
    saved = read_json(base / "model" / "model.json")
    last = [line for line in output.splitlines() if "valid_acc=" in line][-1]  # the tuner's objective
    assert last.startswith("selected epoch=") and f"valid_acc={saved['metrics']['valid_accuracy']:.4f}" in last, \
        (last, saved["metrics"])


def test_hosts_that_see_different_data_fail_alike(tmp_path, tiny_data):
    """As a channel that SageMaker shards by S3 key would: host 2 lacks one training image."""
    trees = programs.make_hosts(tmp_path / "job", 2, tiny_data, HP)
    partial = shutil.copytree(tiny_data["train"], tmp_path / "partial")
    next((partial / "001.Red_box").iterdir()).unlink()
    (trees[1] / "input" / "data" / "train").unlink()
    (trees[1] / "input" / "data" / "train").symlink_to(partial)
    job = Hosts(trees)
    assert job.wait() == [1, 1], [job.output(0), job.output(1)]
    for tree in trees:
        assert failure_reason(tree).startswith("the hosts do not see the same data")


NO_NAMES_RESOLVE = """
import runpy, socket, sys
def no_name(*args, **kwargs):
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
socket.getaddrinfo = no_name  # as on a host whose peers' names are not in DNS yet
sys.argv = sys.argv[1:2]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_a_leader_name_that_never_resolves_fails_the_host_naming_it_and_the_wait(tmp_path, tiny_data):
    trees = programs.make_hosts(tmp_path / "job", 2, tiny_data, {**HP, "host-wait-seconds": 2})
    result = subprocess.run([sys.executable, "-c", NO_NAMES_RESOLVE, str(CONTAINER / "train")],
                            env=program_env(trees[1], **programs.hosts_env(2)), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1, result.stderr
    assert failure_reason(trees[1]).startswith("host name '127.0.0.1' (the leader's address) did not resolve in 2 s "
                                               "of retries"), failure_reason(trees[1])
    assert "does not resolve yet" in result.stderr
