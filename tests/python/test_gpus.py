"""GPU devices: a task or actor that asks for GPUs gets device indices of its
own, exported as CUDA_VISIBLE_DEVICES in its worker; fractions share a device;
a task that asks for none sees no device on a node that has GPUs.

The node declares GPUs it may not have (``resources={"GPU": 2}``): what is
checked is the assignment, which is the same with real devices."""

import os
import time

import pytest

import shoal
from _helpers import fresh, wait_until  # noqa: F401

T = 30


@shoal.remote
def devices(hold=0.0):
    time.sleep(hold)
    return os.environ.get("CUDA_VISIBLE_DEVICES")


@shoal.remote
class Trainer:
    def devices(self):
        return os.environ.get("CUDA_VISIBLE_DEVICES")


@pytest.fixture
def two_gpus(fresh):  # noqa: F811
    shoal.init(num_workers=4, resources={"GPU": 2, "CPU": 4})
    yield


@pytest.mark.asan
def test_whole_gpus_are_distinct_devices(two_gpus):
    a, b = (devices.options(num_gpus=1).remote(1.0) for _ in range(2))
    assert sorted([a.result(timeout=T), b.result(timeout=T)]) == ["0", "1"]
    assert devices.options(num_gpus=2).remote().result(timeout=T) == "0,1"


def test_no_gpu_asked_sees_none(two_gpus):
    # Also on a worker that ran a GPU task before.
    assert devices.options(num_gpus=1).remote().result(timeout=T) in ("0", "1")
    assert shoal.get([devices.remote() for _ in range(8)], timeout=T) == [""] * 8


def test_fractions_share_a_device(two_gpus):
    halves = [devices.options(num_gpus=0.5).remote(1.0) for _ in range(2)]
    whole = devices.options(num_gpus=1).remote(0.5)
    got = shoal.get(halves, timeout=T)
    # The two halves pack on one device, which leaves the other whole.
    assert got[0] == got[1] and got[0] in ("0", "1")
    assert whole.result(timeout=T) == ({"0", "1"} - {got[0]}).pop()


def test_a_third_task_waits_for_a_device(two_gpus):
    held = [devices.options(num_gpus=1).remote(1.5) for _ in range(2)]
    third = devices.options(num_gpus=1).remote()
    time.sleep(0.5)
    assert not third.done()                    # both devices are taken
    assert sorted(shoal.get(held, timeout=T)) == ["0", "1"]
    assert third.result(timeout=T) in ("0", "1")


def test_actor_keeps_its_device(two_gpus):
    t = Trainer.options(num_gpus=1).remote()
    mine = t.devices.remote().result(timeout=T)
    assert mine in ("0", "1")
    other = ({"0", "1"} - {mine}).pop()
    # While the actor lives, tasks get the other device, and the actor keeps its own.
    assert shoal.get([devices.options(num_gpus=1).remote() for _ in range(3)], timeout=T) == [other] * 3
    assert t.devices.remote().result(timeout=T) == mine
    shoal.kill(t)
    # Its device is given back: a task asking for both runs (it waits until then).
    assert devices.options(num_gpus=2).remote().result(timeout=T) == "0,1"


def test_gpu_count_that_is_not_devices(two_gpus):
    with pytest.raises(shoal.InfeasibleResourcesError) as ei:
        devices.options(num_gpus=1.5).remote().result(timeout=T)
    assert "num_gpus=1.5" in str(ei.value) and "whole GPUs" in str(ei.value)


def test_node_without_gpus_leaves_the_variable_alone(fresh, monkeypatch):  # noqa: F811
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")   # inherited by the daemon and its workers
    shoal.init(num_workers=1, resources={"GPU": 0})
    assert devices.remote().result(timeout=T) == "7"
