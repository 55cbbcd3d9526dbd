"""A real Slurm cluster on this machine, for the Slurm test tier (tests/e2e/test_slurm.py).

`SlurmCluster.start` builds it from Debian's ``slurm-wlm`` and ``munge`` packages:

* a bridge in the root network namespace (the controller's address, ``<subnet>.1``) and
  one network namespace per node, each with its own address (``<subnet>.2``, ``.3``, ...)
  and its own host name (a UTS namespace), so a process on node ``node1`` binds
  ``<subnet>.2`` and `socket.gethostname` says ``node1`` there; each node's mount
  namespace sees an /etc/hosts that names every node, as a cluster's name service would
  (gloo, for one, finds the address it listens on from the host name), and a folder of
  its own at `node_local` (a tmpfs per node: a disk the nodes do not share);
* one munged with a fresh key (its socket named in slurm.conf's ``AuthInfo``), slurmctld
  in the root namespace, one ``slurmd -N nodeK`` in each node's namespace;
* no cgroups (``proctrack/linuxproc``, ``task/none``) and nodes declared with more CPUs
  than the machine has (``config_overrides``), with ``OverSubscribe=FORCE``, so a run's
  job, an attached job and their overlapping steps fit on two cores.

Every file (configuration, state, logs, the munge key) lives under one folder given by
the caller; every Slurm command of the tests must see ``SLURM_CONF`` (`env`). `stop`
ends every daemon it started, by its pid, and removes the namespaces and the bridge.

When the packages are missing, `missing_packages_message` names the command that
installs them (``make slurm-setup`` does it, as root).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = ("slurm-wlm", "munge", "iproute2")
COMMANDS = ("slurmctld", "slurmd", "munged", "srun", "sbatch", "scontrol", "sinfo", "squeue", "scancel", "ip", "nsenter")
INSTALL = "apt-get install -y --no-install-recommends slurm-wlm munge iproute2   (as root; or: make slurm-setup)"


def missing_packages_message() -> str | None:
    """None when every Slurm and munge command is installed, else what to run."""
    missing = [command for command in COMMANDS if shutil.which(command) is None
               and not Path("/usr/sbin", command).exists()]
    if not missing:
        return None
    return f"the Slurm test tier needs {', '.join(PACKAGES)} (missing: {', '.join(missing)}); install them with: {INSTALL}"


def _run(*command: str, check: bool = True, env: dict[str, str] | None = None,
         timeout: float = 30) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def _binary(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


@dataclass
class SlurmCluster:
    """A controller and `nodes` slurmd nodes, each in its own network namespace."""

    root: Path
    """Folder for the configuration, state, logs and munge key (removed by nothing: a test's tmp dir)."""
    nodes: int = 2
    tag: str = field(default_factory=lambda: str(os.getpid() % 10000))
    subnet: str = field(default_factory=lambda: f"10.{214 + os.getpid() % 20}.{os.getpid() % 250}")
    daemons: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _links: list[str] = field(default_factory=list)
    _namespaces: list[str] = field(default_factory=list)

    @property
    def node_names(self) -> list[str]:
        return [f"node{k + 1}" for k in range(self.nodes)]

    def address(self, node: str) -> str:
        """A node's address (its namespace's)."""
        return f"{self.subnet}.{self.node_names.index(node) + 2}"

    def namespace(self, node: str) -> str:
        return f"troupe-{self.tag}-{node}"

    @property
    def node_local(self) -> Path:
        """A path every node has, each on a file system of its own (not shared)."""
        return self.root / "node-local"

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    def env(self) -> dict[str, str]:
        """This process's environment with SLURM_CONF pointing at the cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    # ------------------------------------------------------------------ start
    def start(self, timeout: float = 60) -> SlurmCluster:
        """Build the network, write the configuration, start every daemon and wait for
        every node to be idle. Stops what it started if anything fails."""
        try:
            self._network()
            self._configure()
            self._start_daemons()
            self._wait_idle(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _network(self) -> None:
        bridge = f"trbr{self.tag}"
        # what a killed earlier run with the same tag left (the veths go with their namespaces)
        _run("ip", "link", "del", bridge, check=False)
        for node in self.node_names:
            _run("ip", "netns", "del", self.namespace(node), check=False)
        _run("ip", "link", "add", bridge, "type", "bridge")
        self._links.append(bridge)
        _run("ip", "addr", "add", f"{self.subnet}.1/24", "dev", bridge)
        _run("ip", "link", "set", bridge, "up")
        for node in self.node_names:
            namespace, number = self.namespace(node), self.node_names.index(node) + 1
            outside, inside = f"trh{self.tag}n{number}", f"trn{self.tag}n{number}"
            _run("ip", "netns", "add", namespace)
            self._namespaces.append(namespace)
            _run("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
            self._links.append(outside)
            _run("ip", "link", "set", inside, "netns", namespace)
            _run("ip", "link", "set", outside, "master", bridge)
            _run("ip", "link", "set", outside, "up")
            inns = ("ip", "netns", "exec", namespace)
            _run(*inns, "ip", "addr", "add", f"{self.address(node)}/24", "dev", inside)
            _run(*inns, "ip", "link", "set", inside, "up")
            _run(*inns, "ip", "link", "set", "lo", "up")
            _run(*inns, "ip", "route", "add", "default", "via", f"{self.subnet}.1")

    def _configure(self) -> None:
        for folder in ("state", "spool", "log", "munge", "node-local"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "munge", 0o711)  # munged: its socket's folder must be searchable by all
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        port = 20000 + os.getpid() % 20000
        nodes = "\n".join(
            f"NodeName={node} NodeAddr={self.address(node)} NodeHostname={node} CPUs=8 RealMemory=4000 State=UNKNOWN"
            for node in self.node_names
        )
        self.conf.write_text(f"""\
ClusterName=troupetest
SlurmctldHost={socket.gethostname().split('.')[0]}({self.subnet}.1)
SlurmctldPort={port}
SlurmdPort={port + 1}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={self.root / 'munge' / 'munge.sock'}
CredType=cred/munge
StateSaveLocation={self.root / 'state'}
SlurmdSpoolDir={self.root / 'spool'}/%n
SlurmctldPidFile={self.root / 'state' / 'slurmctld.pid'}
SlurmdPidFile={self.root / 'spool'}/slurmd-%n.pid
SlurmctldLogFile={self.root / 'log' / 'slurmctld.log'}
SlurmdLogFile={self.root / 'log'}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=5
{nodes}
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
""")
        hosts = "".join(f"{self.address(node)} {node}\n" for node in self.node_names)
        (self.root / "hosts").write_text(Path("/etc/hosts").read_text() + hosts)
        (self.root / "cgroup.conf").write_text("CgroupPlugin=autodetect\nIgnoreSystemd=yes\n")

    def _start_daemons(self) -> None:
        logs = self.root / "log"
        munge = self.root / "munge"
        self._daemon([_binary("munged"), "--foreground", "--force", f"--socket={munge / 'munge.sock'}",
                      f"--key-file={munge / 'munge.key'}", f"--pid-file={munge / 'munged.pid'}",
                      f"--log-file={logs / 'munged.log'}", f"--seed-file={munge / 'munged.seed'}"], logs / "munged.out")
        deadline = time.monotonic() + 10
        while not (munge / "munge.sock").exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"munged did not start: {(logs / 'munged.out').read_text(errors='replace')}")
            time.sleep(0.05)
        self._daemon([_binary("slurmctld"), "-D", "-i", "-f", str(self.conf)], logs / "slurmctld.out")
        for node in self.node_names:
            # a UTS namespace of its own: the node's processes see its name as their host name
            # nsenter, not `ip netns exec`: that remounts /sys, and slurmd wants the host's cgroup mounts
            (self.root / "spool" / node).mkdir(parents=True, exist_ok=True)
            self._daemon(["nsenter", f"--net=/run/netns/{self.namespace(node)}", "unshare", "--uts", "--mount", "sh", "-c",
                          f'mount --bind {self.root / "hosts"} /etc/hosts && mount -t tmpfs tmpfs {self.node_local} && '
                          f'hostname {node} && '
                          f'exec {_binary("slurmd")} -D -N {node} -f {self.conf}'],
                         logs / f"slurmd-{node}.out")

    def _daemon(self, command: list[str], output: Path) -> None:
        with open(output, "ab") as out:
            self.daemons.append(subprocess.Popen(command, stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                                                 env=self.env(), start_new_session=True))

    def _wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        states = ""
        while time.monotonic() < deadline:
            for daemon in self.daemons:
                if daemon.poll() is not None:
                    raise RuntimeError(f"{daemon.args} exited with {daemon.returncode}; see {self.root / 'log'}")
            result = _run("sinfo", "-h", "-N", "-o", "%N %t", check=False, env=self.env())
            states = result.stdout.strip()
            idle = {line.split()[0] for line in states.splitlines() if line.split()[-1] == "idle"}
            if idle >= set(self.node_names):
                return
            time.sleep(0.3)
        raise RuntimeError(f"the Slurm nodes are not idle after {timeout:g} s: {states!r}; see {self.root / 'log'}")

    # ------------------------------------------------------------------- stop
    def stop(self) -> None:
        """End every job, every daemon this cluster started (by pid), and its network."""
        if self.daemons:
            _run("scancel", "--full", "--user", "root", check=False, env=self.env())
        for daemon in reversed(self.daemons):
            if daemon.poll() is None:
                os.killpg(daemon.pid, signal.SIGTERM)
        for daemon in reversed(self.daemons):
            try:
                daemon.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(daemon.pid, signal.SIGKILL)
                daemon.wait()
        self.daemons.clear()
        for link in reversed(self._links):
            _run("ip", "link", "del", link, check=False)
        for namespace in self._namespaces:
            _run("ip", "netns", "del", namespace, check=False)
        self._links.clear()
        self._namespaces.clear()

    def run_in(self, node: str, *command: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run a command in a node's network namespace (not as a Slurm step)."""
        return _run("ip", "netns", "exec", self.namespace(node), *command, check=False, env=self.env(), timeout=timeout)
