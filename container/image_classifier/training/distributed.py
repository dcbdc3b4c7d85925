"""Data-parallel training across the devices and hosts of one job, with torch.distributed.

A job has `hosts` (resourceconfig.json; the leader is the first) and on each host one process per
GPU, or one process on a CPU host. Process `rank` of `size` trains on its shard of every global
batch; DistributedDataParallel averages the gradients, so a step is the same step as on one
device with the whole batch. `batch-size` is therefore the global batch, and `lr` belongs to it:
values tuned on one device carry over to any number of devices and hosts.

The leader (rank 0) reads checkpoints and writes everything that lasts: the others get its
decisions through `from_leader`, so every host fails with the same reason, or none does.
MASTER_ADDR and MASTER_PORT (torch's own variables) override the leader's address and port,
which lets several hosts run on one machine. A peer process that dies ends every other rank's
next collective at once (its sockets close); a host that vanishes or hangs, after
`distributed-timeout` seconds.
"""
from __future__ import annotations

import dataclasses
import datetime
import errno
import logging
import re
import socket
import time
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from .. import errors
from . import environment
from ..errors import TrainingError

log = logging.getLogger(__name__)



@dataclasses.dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    host: str = ""
    leader_address: str = ""
    port: int = 0

    @property
    def leader(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def describe(self) -> str:
        return f"rank {self.rank} of {self.size} (host {self.host}, local rank {self.local_rank})"


SINGLE = World()


def processes_per_host() -> int:
    """$TRAIN_PROCESSES_PER_HOST, else one per GPU, else 1."""
    return environment.processes_per_host(torch.cuda.device_count())


def plan(resources: dict) -> World:
    """This process's place in the job: from torchrun's variables in a worker it started (several
    processes per host), else from resourceconfig.json (one process per host)."""
    hosts, host = resources["hosts"], resources["current_host"]
    address, port = environment.leader(hosts[0])
    place = environment.torchrun_place()
    if place:  # a worker torchrun started
        return World(*place, host, address, port)
    return World(hosts.index(host), len(hosts), 0, host, address, port)


def wait_for_address(address: str, seconds: float, resolve: Callable = socket.getaddrinfo) -> None:
    """Retry resolving a host name for up to `seconds`, backing off to 10 s between tries. On
    SageMaker a job's host names "may not be immediately available" (its distributed training
    docs ask for a retry policy); sagemaker-training waits up to 15 minutes for each host."""
    started, delay, told = time.monotonic(), 0.25, False
    while True:
        try:
            resolve(address, None)
            if told:
                log.info("host name %s resolved after %.0f s", address, time.monotonic() - started)
            return
        except (socket.gaierror, UnicodeError) as e:
            waited = time.monotonic() - started
            if waited >= seconds:
                raise TrainingError(f"host name {address!r} (the leader's address) did not resolve in {waited:.0f} s "
                                    f"of retries ({first_line(e)}); raise host-wait-seconds (now {seconds:g}) if the "
                                    "job's hosts take longer to appear") from None
            if not told:
                log.warning("host name %s does not resolve yet (%s): retrying for up to %g s", address,
                            first_line(e), seconds)
                told = True
            time.sleep(min(delay, seconds - waited))
            delay = min(delay * 2, 10.0)


def device_for(world: World) -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(world.local_rank)
        return torch.device("cuda", world.local_rank)
    return torch.device("cpu")


def start(world: World, timeout_seconds: float, interface: str | None) -> None:
    """Join the process group: NCCL between GPUs, gloo between CPU processes."""
    if not world.distributed:
        return
    device = device_for(world)
    if interface:  # resourceconfig's network_interface_name: eth0 on SageMaker
        environment.export_default("GLOO_SOCKET_IFNAME", interface)
        environment.export_default("NCCL_SOCKET_IFNAME", interface)
    timeout = datetime.timedelta(seconds=timeout_seconds)
    backend = "nccl" if device.type == "cuda" else "gloo"
    log.info("%s: joining %s at %s:%d (%s, timeout %ds)", world.describe(), "the leader" if not world.leader
             else "as leader", world.leader_address, world.port, backend, timeout_seconds)
    try:
        if environment.torchrun_agent():  # torchrun's agent holds the store
            dist.init_process_group(backend, init_method="env://", timeout=timeout,
                                    device_id=device if device.type == "cuda" else None)
            return
        store = _store(world, timeout)
        dist.init_process_group(backend, store=store, rank=world.rank, world_size=world.size, timeout=timeout)
    except (RuntimeError, OSError) as e:  # DistStoreError and DistNetworkError are RuntimeErrors
        raise TrainingError(f"{world.describe()} could not join the other hosts at {world.leader_address}:"
                            f"{world.port}: {first_line(e)}") from None


def _store(world: World, timeout: datetime.timedelta) -> dist.TCPStore:
    """torch's TCPStore; the leader's listens on the leader address only (torch's own binds every
    interface), so a local multi-host run stays on 127.0.0.1."""
    if not world.leader:
        return dist.TCPStore(world.leader_address, world.port, world.size, False, timeout)
    try:
        listener = socket.create_server((world.leader_address, world.port), backlog=128)
    except OSError as e:
        if e.errno != errno.EADDRNOTAVAIL:  # the address is not this host's (NAT): listen on every interface
            raise
        listener = socket.create_server(("", world.port), backlog=128)
    store = dist.TCPStore(world.leader_address, world.port, world.size, True, timeout,
                          master_listen_fd=listener.fileno())
    _LISTENERS.append(listener)  # the store serves on this socket: keep it open while the process lives
    return store


_LISTENERS: list[socket.socket] = []


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap(net: nn.Module, world: World, device: torch.device) -> nn.Module:
    """DistributedDataParallel around what a step runs; the net itself on one process."""
    if not world.distributed:
        return net
    return nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)


def total(world: World, values: list[float], device: torch.device) -> list[float]:
    """The sum over ranks of each value (counts and sums of a sharded pass)."""
    if not world.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def anyone(world: World, flags: list[bool], device: torch.device) -> list[bool]:
    """Each flag, true if it is true on any rank (a SIGTERM one host saw, a loss one rank found bad)."""
    return [v > 0 for v in total(world, [float(f) for f in flags], device)]


def from_leader(world: World, read: Callable[[], Any]) -> Any:
    """read() on the leader, its result (or its TrainingError) on every rank."""
    if not world.distributed:
        return read()
    box: list = [None]
    if world.leader:
        try:
            box[0] = ("ok", read())
        except TrainingError as e:
            box[0] = ("error", str(e))
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        raise TrainingError(value)
    return value


def same_weights(world: World, model: nn.Module) -> None:
    """Every rank takes the leader's tensors (the best epoch's weights, which only it keeps)."""
    if world.distributed:
        for tensor in model.state_dict().values():
            dist.broadcast(tensor.data, src=0)


def gather_rows(world: World, rows: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Rows each rank filled for its shard (zeros elsewhere), combined on every rank."""
    if not world.distributed:
        return rows
    moved = rows.to(device)
    dist.all_reduce(moved)
    return moved.cpu()


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def shard(world: World, items: list) -> list:
    """Every world.size-th item from this rank's: the shards cover every item exactly once."""
    return items[world.rank::world.size]


def lost_peer(error: BaseException) -> bool:
    """An error that means another rank is gone (its sockets closed) or stopped answering: torch's
    distributed errors, and gloo's transport errors (RuntimeErrors naming gloo's transport)."""
    text = str(error)
    return isinstance(error, dist.DistError) or (isinstance(error, RuntimeError) and any(
        marker in text for marker in ("gloo/transport", "Connection reset by peer", "Connection closed by peer")))


def first_line(error: BaseException) -> str:
    """The error's first line without gloo's source location and advice: 'Read error [10.0.0.2]:4317:
    Connection reset by peer'."""
    line = errors.first_line(error)
    return re.sub(r"^\[[^\]]*\.(cc|cpp|hpp):\d+\] ", "", line).split(". This is typically")[0]
