"""The pieces of data-parallel training that need no second process: where a process stands in the
job, how a global step is split, which errors mean a lost peer."""
import pytest

from image_classifier.training import distributed, environment
from image_classifier.training.distributed import World
from image_classifier.errors import TrainingError
from image_classifier.training.sampler import EpochSampler

RESOURCES = {"current_host": "algo-2", "hosts": ["algo-1", "algo-2", "algo-3"], "network_interface_name": "eth0"}


def test_a_host_is_ranked_by_its_place_in_resourceconfig(monkeypatch):
    for name in ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    world = distributed.plan(RESOURCES)
    assert (world.rank, world.size, world.leader_address, world.port) == (1, 3, "algo-1", 7777)
    assert not world.leader and world.describe() == "rank 1 of 3 (host algo-2, local rank 0)"
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    assert (distributed.plan(RESOURCES).leader_address, distributed.plan(RESOURCES).port) == ("127.0.0.1", 29500)
    # a worker torchrun started (one per GPU) takes torchrun's numbers
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "12")
    assert distributed.plan(RESOURCES) == World(5, 12, 1, "algo-2", "127.0.0.1", 29500)


@pytest.mark.parametrize("port", ["0", "70000", "http"])
def test_a_bad_master_port_is_a_training_error(monkeypatch, port):
    monkeypatch.setenv("MASTER_PORT", port)
    with pytest.raises(TrainingError, match=f"MASTER_PORT must be a port number; got '{port}'"):
        distributed.plan(RESOURCES)


def test_processes_per_host_override(monkeypatch):
    monkeypatch.setenv(environment.PROCESSES_PER_HOST, "3")
    assert distributed.processes_per_host() == 3
    monkeypatch.setenv(environment.PROCESSES_PER_HOST, "0")
    with pytest.raises(TrainingError, match="TRAIN_PROCESSES_PER_HOST must be a whole number >= 1"):
        distributed.processes_per_host()


@pytest.mark.parametrize("n, batch, size, skip", [(37, 8, 2, 0), (37, 8, 4, 16), (40, 12, 3, 12), (5, 8, 2, 0)])
def test_the_ranks_split_every_global_step_of_the_same_shuffle(n, batch, size, skip):
    drop_last = n > batch
    whole = EpochSampler(n, seed=7)
    whole.set_epoch(3, skip)
    order = list(whole)
    steps = len(order) // batch if drop_last else 1
    parts = []
    for rank in range(size):
        sampler = EpochSampler(n, 7, world=World(rank, size), batch_size=batch, drop_last=drop_last)
        sampler.set_epoch(3, skip)
        parts.append(list(sampler))
        assert len(sampler) == len(parts[-1])
    if drop_last:
        assert all(len(p) == steps * batch // size for p in parts)
        for step in range(steps):  # step s is the same images, whatever the world size
            together = [i for p in parts for i in p[step * batch // size:(step + 1) * batch // size]]
            assert together == order[step * batch:(step + 1) * batch]
    else:
        assert sorted(i for p in parts for i in p) == sorted(order)


def test_seeded_keys_are_the_same_on_any_rank():
    one = EpochSampler(16, 3, seeded=True)
    two = [EpochSampler(16, 3, seeded=True, world=World(r, 2), batch_size=4, drop_last=True) for r in (0, 1)]
    for s in (one, *two):
        s.set_epoch(2)
    keys = dict(one)
    assert all(keys[i] == seed for s in two for i, seed in s)


def test_shards_cover_every_item_once():
    items = list(range(11))
    shards = [distributed.shard(World(r, 3), items) for r in range(3)]
    assert sorted(sum(shards, [])) == items and [len(s) for s in shards] == [4, 4, 3]


def test_lost_peer_errors_and_their_short_form():
    gloo = RuntimeError("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error "
                        "[127.0.0.1]:4317: Connection reset by peer. This is typically caused by a remote worker "
                        "hanging or bugs in the application.")
    assert distributed.lost_peer(gloo)
    assert distributed.first_line(gloo) == "Read error [127.0.0.1]:4317: Connection reset by peer"
    assert not distributed.lost_peer(RuntimeError("CUDA out of memory"))
    assert not distributed.lost_peer(ValueError("Connection reset"))


def test_one_process_needs_no_process_group():
    single = distributed.SINGLE
    assert distributed.total(single, [1.5, 2], None) == [1.5, 2]
    assert distributed.anyone(single, [True, False], None) == [True, False]
    assert distributed.from_leader(single, lambda: "read") == "read"
    with pytest.raises(TrainingError, match="refused"):
        distributed.from_leader(single, lambda: (_ for _ in ()).throw(TrainingError("refused")))


class FakeClock:
    def __init__(self):
        self.now, self.sleeps = 0.0, []

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


def test_a_host_name_is_retried_until_it_resolves_with_backoff(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(distributed.time, "monotonic", clock.monotonic)
    monkeypatch.setattr(distributed.time, "sleep", clock.sleep)
    tries = []

    def resolve(name, port):
        tries.append(name)
        if len(tries) < 8:
            raise distributed.socket.gaierror(-2, "Name or service not known")
    distributed.wait_for_address("algo-1", 900, resolve)
    assert tries == ["algo-1"] * 8 and clock.sleeps == [0.25, 0.5, 1, 2, 4, 8, 10]


def test_a_host_name_that_never_resolves_fails_naming_it_and_the_wait(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(distributed.time, "monotonic", clock.monotonic)
    monkeypatch.setattr(distributed.time, "sleep", clock.sleep)

    def resolve(name, port):
        raise distributed.socket.gaierror(-2, "Name or service not known")
    with pytest.raises(TrainingError) as e:
        distributed.wait_for_address("algo-1", 60, resolve)
    assert str(e.value).startswith("host name 'algo-1' (the leader's address) did not resolve in 60 s of retries "
                                   "([Errno -2] Name or service not known); raise host-wait-seconds (now 60)")
    assert sum(clock.sleeps) == 60 and max(clock.sleeps) == 10  # bounded: the last wait ends at the limit
