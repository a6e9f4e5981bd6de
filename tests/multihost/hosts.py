"""Test hosts on one machine: network namespaces joined by veth pairs on a private bridge.

Each host is a network namespace with one interface, `stnet0`, holding 10.213.0.(10+i)/24
(and net.ipv4.tcp_retries2 = 2, below); the
other end of its veth pair sits on a bridge that exists only for this test and has no address,
so the hosts reach each other and nothing else (no route leaves a namespace, and the machine's
own namespace is not on the bridge). Each host also gets its own hostname: commands run in a
new UTS namespace (unshare --uts) named after the host, so Open MPI sees distinct nodes.

    with Hosts(2) as hosts:
        p = hosts.mpirun([2, 2], ["shardtrain", "train", ...])   # 2 ranks per host
        hosts.cut(1)        # host 1's link goes down (carrier lost on both ends)
        hosts.drop(1)       # host 1's frames vanish silently (its port leaves the bridge; the
                            # link stays up): a switch that stops forwarding
        hosts.kill(1)       # SIGKILL every process of host 1
        hosts.pids(1)       # processes still running on host 1

mpirun runs on host 0 and starts an Open MPI daemon on each other host through an rsh agent
that is `ip netns exec HOST` (plm_rsh_agent, tree spawn off); ranks talk over TCP on stnet0
only (btl tcp,self: no shared memory even inside a host; oob_tcp_if_include for the daemons).
Everything is removed on every exit path (the context manager, atexit, SIGTERM from ctest);
`Hosts.unavailable()` says why hosts cannot be made here (not root, no netns support).
"""
import atexit
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

SUBNET = "10.213.0"
IFACE = "stnet0"


def sh(*cmd, check=True):
    return subprocess.run(list(cmd), check=check, capture_output=True, text=True)


class Hosts:
    def __init__(self, n):
        self.n = n
        tag = f"{os.getpid() % 100000}"
        self.names = [f"st{tag}h{i}" for i in range(n)]
        self.ports = [f"st{tag}p{i}" for i in range(n)]  # the bridge ends of the veth pairs
        self.bridge = f"st{tag}br"
        self.dir = tempfile.mkdtemp(prefix="sthosts")
        self.agent = os.path.join(self.dir, "agent.sh")
        self.made = []

    @staticmethod
    def unavailable():
        """Why test hosts cannot be made here, or None."""
        if os.geteuid() != 0:
            return "network namespaces need root"
        for tool in ("ip", "unshare"):
            if shutil.which(tool) is None:
                return f"{tool} is not installed (scripts/setup.sh installs iproute2)"
        name = f"stprobe{os.getpid() % 100000}"
        r = sh("ip", "netns", "add", name, check=False)
        if r.returncode != 0:
            return f"ip netns add failed: {r.stderr.strip()}"
        # `ip netns exec` remounts / and /sys in a new mount namespace, which a chroot refuses.
        r = sh("ip", "netns", "exec", name, "true", check=False)
        sh("ip", "netns", "del", name, check=False)
        if r.returncode != 0:
            return f"ip netns exec failed: {r.stderr.strip() or f'exit {r.returncode}'}"
        if sh("unshare", "--uts", "true", check=False).returncode != 0:
            return "unshare --uts failed"
        if shutil.which("mpirun") is None:
            return "mpirun is not installed (scripts/setup.sh installs Open MPI)"
        return None

    def address(self, i):
        return f"{SUBNET}.{10 + i}"

    def __enter__(self):
        atexit.register(self.close)
        previous = signal.getsignal(signal.SIGTERM)

        def on_term(signum, frame):
            self.close()
            if callable(previous):
                previous(signum, frame)
            sys.exit(143)
        signal.signal(signal.SIGTERM, on_term)
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        self.made.append(("link", self.bridge))
        self._no_ipv6(self.bridge)
        for i, (name, port) in enumerate(zip(self.names, self.ports)):
            sh("ip", "netns", "add", name)
            self.made.append(("netns", name))
            sh("ip", "link", "add", port, "type", "veth", "peer", "name", f"{port}x")
            self.made.append(("link", port))
            self._no_ipv6(port)
            sh("ip", "link", "set", f"{port}x", "netns", name)
            ns = ["ip", "netns", "exec", name]
            sh(*ns, "ip", "link", "set", f"{port}x", "name", IFACE)
            sh(*ns, "sysctl", "-q", "-w", f"net.ipv6.conf.{IFACE}.disable_ipv6=1")
            sh(*ns, "ip", "addr", "add", f"{self.address(i)}/24", "dev", IFACE)
            sh(*ns, "ip", "link", "set", IFACE, "up")
            sh(*ns, "ip", "link", "set", "lo", "up")
            # Linux retransmits unacknowledged data for ~15 minutes (tcp_retries2 = 15) before
            # it tells a program the peer is gone; Open MPI's launcher learns of a cut-off host
            # only that way once it has something to send there (the kill of an aborted job).
            # These hosts give up after ~1.4 s (0.2 s x (2^3 - 1)), as a cluster tuned for fast
            # failure detection would (README "Running on a cluster").
            sh(*ns, "sysctl", "-q", "-w", "net.ipv4.tcp_retries2=2")
            sh("ip", "link", "set", port, "master", self.bridge)
            sh("ip", "link", "set", port, "up")
        sh("ip", "link", "set", self.bridge, "up")
        # Open MPI's rsh launcher runs `AGENT HOST CMD...` with CMD meant for a remote shell.
        with open(self.agent, "w") as f:
            f.write('#!/bin/sh\nhost="$1"; shift\n'
                    'exec ip netns exec "$host" unshare --uts sh -c "hostname $host; $*"\n')
        os.chmod(self.agent, 0o755)
        return self

    def _no_ipv6(self, iface):
        path = f"/proc/sys/net/ipv6/conf/{iface}/disable_ipv6"
        if os.path.exists(path):
            with open(path, "w") as f:
                f.write("1")

    def __exit__(self, *exc):
        self.close()

    def close(self):
        for kind, name in reversed(self.made):
            if kind == "netns":
                for pid in self.pids_of(name):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                sh("ip", "netns", "del", name, check=False)
            else:
                sh("ip", "link", "del", name, check=False)
        self.made = []

    def pids_of(self, name):
        r = sh("ip", "netns", "pids", name, check=False)
        return [int(x) for x in r.stdout.split()] if r.returncode == 0 else []

    def pids(self, i):
        return self.pids_of(self.names[i])

    def run_on(self, i, cmd, **kw):
        """A command on host i, with that host's name."""
        script = f'hostname {self.names[i]}; exec "$@"'
        return ["ip", "netns", "exec", self.names[i], "unshare", "--uts", "sh", "-c", script,
                "sh"] + list(cmd)

    def mpirun_command(self, ranks_per_host, cmd, mca=()):
        """mpirun on host 0 over the hosts with ranks_per_host[i] > 0 ranks each, in host order
        (ranks 0 .. k-1 on the first, and so on)."""
        hostfile = os.path.join(self.dir, "hostfile")
        with open(hostfile, "w") as f:
            for name, k in zip(self.names, ranks_per_host):
                if k > 0:
                    f.write(f"{name} slots={k}\n")
        args = ["mpirun", "--allow-run-as-root", "-np", str(sum(ranks_per_host)),
                "--hostfile", hostfile, "--map-by", "slot",
                "--mca", "plm_rsh_agent", self.agent, "--mca", "plm_rsh_no_tree_spawn", "1",
                "--mca", "btl", "tcp,self", "--mca", "btl_tcp_if_include", IFACE,
                "--mca", "oob_tcp_if_include", IFACE,
                "--mca", "oob_tcp_keepalive_time", "3", "--mca", "oob_tcp_keepalive_intvl", "1",
                "--mca", "oob_tcp_keepalive_probes", "2"]
        for k, v in mca:
            args += ["--mca", k, v]
        return self.run_on(0, args + list(cmd))

    def cut(self, i):
        sh("ip", "link", "set", self.ports[i], "down")

    def drop(self, i):
        sh("ip", "link", "set", self.ports[i], "nomaster")

    def kill(self, i):
        for pid in self.pids(i):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def wait_gone(hosts, seconds):
    """Waits up to `seconds` for every host to have no process; the leftovers per host."""
    deadline = time.monotonic() + seconds
    while True:
        left = {i: hosts.pids(i) for i in range(hosts.n) if hosts.pids(i)}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)
