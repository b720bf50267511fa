"""Three hosts in network namespaces (a head and two node agents, each with
its own address on a private subnet behind a bridge the test creates); one
host's link is cut while it runs tasks: the head declares it dead and its
work runs again on the other node. Needs root (ip netns); skips otherwise."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid

import pytest

import shoal
from _helpers import binary, env_with_shoal, fresh, short_tmpdir, wait_until  # noqa: F401
from test_auth import free_port, write_token


def _netns_usable():
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return "needs the ip command (iproute2)"
    name = f"shprobe{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if r.returncode != 0:
        return f"cannot create a network namespace here: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


WHY_NOT = _netns_usable()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")


def ip(*args, ns=None, check=True):
    argv = (["ip", "netns", "exec", ns, "ip"] if ns else ["ip"]) + list(args)
    r = subprocess.run(argv, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {r.stderr.strip()}")
    return r


class Net:
    """A bridge in this namespace (address .254) and one namespace per host,
    each joined to the bridge by a veth pair. Names are unique per run and
    everything is removed by close()."""

    def __init__(self, hosts):
        tag = uuid.uuid4().hex[:6]
        self.subnet = f"10.{200 + os.getpid() % 50}.{int(tag[:2], 16)}"
        self.bridge = f"shbr{tag}"
        self.hosts = {}
        self.links = []
        try:
            ip("link", "add", self.bridge, "type", "bridge")
            ip("addr", "add", f"{self.subnet}.254/24", "dev", self.bridge)
            ip("link", "set", self.bridge, "up")
            for i, h in enumerate(hosts, 1):
                ns, outer, inner = f"sh{tag}{h}", f"shv{tag}{i}", f"shp{tag}{i}"
                ip("netns", "add", ns)
                ip("link", "add", outer, "type", "veth", "peer", "name", inner)
                self.links.append(outer)
                ip("link", "set", inner, "netns", ns)
                ip("link", "set", outer, "master", self.bridge)
                ip("link", "set", outer, "up")
                ip("addr", "add", f"{self.subnet}.{i}/24", "dev", inner, ns=ns)
                ip("link", "set", inner, "up", ns=ns)
                ip("link", "set", "lo", "up", ns=ns)
                self.hosts[h] = (ns, f"{self.subnet}.{i}", outer)
        except BaseException:
            self.close()
            raise

    def cut(self, host):
        """Takes the host's link down: its processes live on, unreachable."""
        ip("link", "set", self.hosts[host][2], "down")

    def close(self):
        for outer in self.links:
            ip("link", "del", outer, check=False)
        for ns, _, _ in self.hosts.values():
            ip("netns", "del", ns, check=False)
        ip("link", "del", self.bridge, check=False)


def start(net, host, argv):
    ns = net.hosts[host][0]
    return subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env_with_shoal(), text=True)


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate(timeout=5)


@shoal.remote(max_retries=3)
def slow_where(i):
    time.sleep(0.3)
    return i, os.environ["SHOAL_NODE_ID"]


def test_cut_link_moves_the_work(fresh, monkeypatch):  # noqa: F811
    net = Net(["head", "a", "b"])
    tokdir = short_tmpdir("shtok-")
    token = write_token(tokdir)
    dirs = [short_tmpdir("shns-") for _ in range(3)]
    procs = []
    head_ip = net.hosts["head"][1]
    port = free_port()
    address = f"{head_ip}:{port}"

    def status():
        r = subprocess.run([binary(), "status", "--json", "--address", address, "--token-file",
                            token, "--timeout", "5"], capture_output=True, text=True,
                           timeout=30)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    try:
        procs.append(start(net, "head", [
            binary(), "start", "--head", "--block", "--port", str(port), "--bind", head_ip,
            "--token-file", token, "--workers", "0", "--num-cpus", "0",
            "--heartbeat-timeout", "3", "--socket-dir", dirs[0], "--python", sys.executable]))
        wait_until(lambda: subprocess.run(
            [binary(), "status", "--address", address, "--token-file", token, "--timeout", "2"],
            capture_output=True).returncode == 0, 30, 0.1, "the head in its namespace")
        for host, d in (("a", dirs[1]), ("b", dirs[2])):
            procs.append(start(net, host, [
                binary(), "start", "--address", address, "--block", "--token-file", token,
                "--workers", "2", "--num-cpus", "2", "--heartbeat-timeout", "3",
                "--socket-dir", d, "--python", sys.executable]))
        wait_until(lambda: sum(n["alive"] for n in status()["nodes"]) == 3, 30, 0.2,
                   "both nodes joined")
        by_pid = {n["pid"]: n["node_id"] for n in status()["nodes"]}
        node_a, node_b = by_pid[procs[1].pid], by_pid[procs[2].pid]

        monkeypatch.setenv("SHOAL_TOKEN_FILE", token)
        shoal.init(address=address)
        futs = [slow_where.remote(i) for i in range(40)]
        # Let both nodes take work, then cut b off while it runs some.
        wait_until(lambda: sum(f.done() for f in futs) >= 4, 60, 0.05, "the first results")
        net.cut("b")
        results = shoal.get(futs, timeout=120)
        assert sorted(i for i, _ in results) == list(range(40))
        nodes = {n["node_id"]: n for n in status()["nodes"]}
        assert not nodes[node_b]["alive"], f"the cut node is not declared dead: {nodes[node_b]}"
        assert nodes[node_b]["dead_reason"], nodes[node_b]
        assert nodes[node_a]["alive"]
        ran_on = {node for _, node in results}
        assert str(node_a) in ran_on
        # Work after the cut runs on the node that is still reachable.
        late = shoal.get([slow_where.remote(100 + i) for i in range(6)], timeout=60)
        assert {node for _, node in late} == {str(node_a)}
    finally:
        shoal.shutdown()
        for p in reversed(procs):
            stop(p)
        net.close()
        for d in dirs + [tokdir]:
            shutil.rmtree(d, ignore_errors=True)
