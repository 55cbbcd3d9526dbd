"""Runs on a real Slurm cluster: `troupe submit`, `troupe launch --slurm`, `troupe attach --slurm`.

The module starts its own cluster (tests/slurm_cluster.py: munged, slurmctld, and two
slurmd nodes, each in a network namespace with its own address and host name) and
tears it down at the end; the run directories are on this machine's file system,
which both nodes share. Two launches are shared by the tests:

* the pipeline, spread over both nodes; while it runs a stage's process is killed
  with SIGKILL on its node (the restart policy starts a new step), a stage joins as a
  new job (`troupe attach --slurm`) and gets work, and `troupe stop` ends every step
  and every job;
* arithmetic GRPO with two FSDP trainer ranks, one on each node (they rendezvous
  through the registry, at the store trainer-0 opens on node1's address, and gloo on
  the nodes' addresses), and the generator on the node trainer-0 is not on, so every
  weight version crosses nodes. It is submitted first and trains while the pipeline's
  tests run.

`troupe ps` and `troupe logs` name each actor's node, on both runs.

A third job is refused: its run directory is on a disk each node has of its own.

Needs root (namespaces, Slurm's daemons) and Debian's slurm-wlm and munge packages:
without them the tests fail, saying what to install (`make slurm-setup`); they are
never skipped.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from examples.arith.build import build
from launch.logs import read_logs
from roles.metrics import read_metrics
from runtime.security import is_loopback_endpoint
from tests.e2e.cli import TROUPE, run_processes, stored_indices, wait_for, write_topology
from tests.slurm_cluster import SlurmCluster, missing_packages_message

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    missing = missing_packages_message()
    if missing:
        pytest.fail(missing)
    if os.geteuid() != 0:
        pytest.fail("the Slurm test tier needs root to build its cluster (namespaces, Slurm's daemons): "
                    "run it as root (CI runs .ci/run as root)")
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm")).start()
    try:
        yield cluster
    finally:
        cluster.stop()


def slurm(cluster: SlurmCluster, *command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, env=cluster.env(), timeout=timeout)


def troupe_on(cluster: SlurmCluster, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return slurm(cluster, TROUPE, *args, timeout=timeout)


def actors(cluster: SlurmCluster, run_dir: Path) -> dict[str, dict[str, Any]]:
    listed = troupe_on(cluster, "ps", str(run_dir), "--json")
    return {row["name"]: row for row in json.loads(listed.stdout)} if listed.returncode == 0 else {}


def table_rows(table: str) -> list[list[str]]:
    """The cells of a rich table's rows (`troupe ps`)."""
    return [[cell.strip() for cell in line.split("│")[1:-1]] for line in table.splitlines() if line.startswith("│")]


def job_of(submitted: subprocess.CompletedProcess[str]) -> str:
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    return submitted.stdout.split()[2].rstrip(":")  # "submitted job 12: run in ..."


def jobs_and_steps(cluster: SlurmCluster, *jobs: str) -> list[str]:
    """The ids of the live jobs and steps (of `jobs` only, when given)."""
    listed = (slurm(cluster, "squeue", "--noheader", "--format=%i").stdout.split()
              + slurm(cluster, "squeue", "--steps", "--noheader", "--format=%i").stdout.split())
    return [item for item in listed if not jobs or item.split(".")[0] in jobs]


def ready_pid(run_dir: Path, instance: str) -> int | None:
    """The pid in an instance's ready file (written by each new step once it serves): a
    cheap poll, where `troupe ps` costs a process start."""
    try:
        return json.loads((run_dir / "slurm" / "ready" / f"{instance}.json").read_text())["pid"]
    except (OSError, ValueError):
        return None


def job_output(run_dir: Path) -> str:
    return "\n".join(path.read_text() for path in sorted((run_dir / "slurm").glob("job-*.out")))


def wait_for_job_end(cluster: SlurmCluster, run_dir: Path, *jobs: str, timeout: float = 90) -> None:
    wait_for(lambda: not jobs_and_steps(cluster, *jobs), timeout,
             f"jobs {', '.join(jobs)} and their steps to end; job output:\n{job_output(run_dir)}")


def attached_jobs(run_dir: Path) -> list[str]:
    path = run_dir / "slurm" / "attached-jobs"
    return path.read_text().split() if path.exists() else []


def assert_nothing_left(cluster: SlurmCluster, run_dir: Path, *jobs: str) -> None:
    assert jobs_and_steps(cluster, *jobs) == []
    _, left = psutil.wait_procs(run_processes(run_dir), timeout=10)
    assert not left, f"processes outlived the run: {[p.cmdline()[-6:] for p in left]}"


# ------------------------------------------------------------------ the pipeline
@pytest.fixture(scope="module")
def pipeline(cluster: SlurmCluster, grpo: tuple[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A pipeline run spread over both nodes (producer on node 0, sink on node 1), running.

    Submitted after the GRPO run (`grpo`), which then starts its roles while the pipeline's
    tests run: the two cores are shared rather than waited for one run after the other."""
    folder = tmp_path_factory.mktemp("pipeline")
    topology = write_topology(folder, items=5000, interval_s=0.05)
    run_dir = folder / "run"
    submitted = troupe_on(cluster, "submit", str(topology), "--nodes", "2", "--run-dir", str(run_dir),
                          "--set", "roles.producer.node=0", "--set", "roles.sink.node=node2", "--set", "start=together",
                          "--time=10")
    job = job_of(submitted)
    (folder / "job-id").write_text(job)
    try:
        wait_for(lambda: "is up" in job_output(run_dir), 90, f"the run to come up:\n{job_output(run_dir)}")
        yield run_dir
    finally:
        troupe_on(cluster, "stop", str(run_dir))
        wait_for_job_end(cluster, run_dir, job, *attached_jobs(run_dir))


def test_submit_keeps_the_batch_script_in_the_run_directory(pipeline: Path) -> None:
    script = (pipeline / "slurm" / "submit.sbatch").read_text()
    assert "#SBATCH --nodes=2" in script and "#SBATCH --time=10" in script
    assert f"launch {pipeline.parent / 'topology.yaml'} --slurm --run-dir {pipeline}" in script


def test_instances_run_on_the_nodes_their_placement_names_bound_beyond_loopback(cluster: SlurmCluster, pipeline: Path) -> None:
    running = actors(cluster, pipeline)
    nodes = {name: row["host"] for name, row in running.items()}
    assert nodes["producer-0"] == "node1" and nodes["sink-0"] == "node2"
    assert {nodes["stage-0"], nodes["stage-1"]} == {"node1", "node2"}  # spread
    for name, row in running.items():
        assert not is_loopback_endpoint(row["endpoint"]), f"{name} listens on {row['endpoint']}"
        assert row["endpoint"].startswith(f"tcp://{cluster.address(row['host'])}:")
    info = json.loads((pipeline / "registry.json").read_text())
    assert info["curve_keys_dir"] and info["registry"].startswith(f"tcp://{cluster.address('node1')}:")
    table = troupe_on(cluster, "ps", str(pipeline)).stdout  # the host column is each actor's node
    assert {(row[0], row[4]) for row in table_rows(table)} >= {("producer-0", "node1"), ("sink-0", "node2")}, table
    listing = troupe_on(cluster, "logs", str(pipeline), "--kind", "actor.started").stdout
    assert "producer-0@node1 " in listing and "sink-0@node2 " in listing, listing


def test_a_role_killed_on_its_node_is_restarted_by_policy_as_a_new_step(cluster: SlurmCluster, pipeline: Path) -> None:
    victim = actors(cluster, pipeline)["stage-1"]
    os.kill(victim["pid"], signal.SIGKILL)  # one machine: the node's processes are visible here
    wait_for(lambda: ready_pid(pipeline, "stage-1") not in (None, victim["pid"]), 60, "stage-1 to be restarted")
    restarted = wait_for(lambda: (row := actors(cluster, pipeline).get("stage-1")) and row["host"] and row, 30,
                         "the restarted stage-1 to register")
    assert restarted["restarts"] == 1 and restarted["pid"] == ready_pid(pipeline, "stage-1")
    assert restarted["host"] == victim["host"]
    assert "stage-1 exited with code" in job_output(pipeline)


def test_a_stage_attached_as_a_new_job_joins_the_run_and_gets_work(cluster: SlurmCluster, pipeline: Path) -> None:
    attached = troupe_on(cluster, "attach", str(pipeline), "stage", "--slurm", "--nodes", "1")
    assert attached.returncode == 0, attached.stderr
    log = pipeline / "logs" / "stage-2.jsonl"
    wait_for(lambda: log.exists() and '"handled"' in log.read_text(), 60,
             f"the attached stage to get work:\n{job_output(pipeline)}")
    joined = actors(cluster, pipeline)["stage-2"]
    assert joined["host"] in cluster.node_names
    assert not is_loopback_endpoint(joined["endpoint"])


def test_stop_ends_every_step_and_job_and_leaves_no_process(cluster: SlurmCluster, pipeline: Path) -> None:
    jobs = [(pipeline.parent / "job-id").read_text(), *attached_jobs(pipeline)]
    assert len(jobs) == 2
    stopped = troupe_on(cluster, "stop", str(pipeline))
    assert stopped.returncode == 0, stopped.stderr
    wait_for_job_end(cluster, pipeline, *jobs, timeout=60)
    assert_nothing_left(cluster, pipeline, *jobs)
    assert json.loads((pipeline / "registry.json").read_text())["state"] == "finished"
    assert max(stored_indices(pipeline).values()) == 1, "no item stored twice"


def test_a_run_directory_the_nodes_do_not_share_is_refused_naming_the_node(cluster: SlurmCluster, tmp_path: Path) -> None:
    output = tmp_path / "job.out"  # where this test can read it: the run directory is node1's own
    job = job_of(troupe_on(cluster, "submit", str(write_topology(tmp_path, items=10)), "--nodes", "2",
                           "--run-dir", str(cluster.node_local / "run"), f"--output={output}"))
    wait_for(lambda: not jobs_and_steps(cluster, job), 60, "the job to fail")
    text = output.read_text()
    assert f"the run directory {cluster.node_local / 'run'} is not shared with node node2" in text, text
    assert "must be on a file system every node mounts at the same path" in text


# ------------------------------------------------------------------ GRPO across nodes
def grpo_topology(folder: Path, data: Path) -> Path:
    topology = yaml.safe_load((REPO / "examples/recipes/grpo.yaml").read_text())
    topology["runtime"] = {"heartbeat_interval_s": 0.5, "heartbeat_timeout_s": 5.0}
    roles = topology["roles"]
    roles.pop("evaluator")
    roles.pop("reference")  # one torch process fewer on two cores; the trainer and generator are what crosses nodes
    for role in roles.values():
        if "model" in role.get("config", {}):
            role["config"]["model"] = str(data / "model")
    roles["controller"]["config"].update({
        "tokenizer": str(data / "model"), "steps": 1, "prompts_per_step": 4, "checkpoint_every": 0,
        "data": {"files": [str(data / "train.jsonl")], "seed": 0},
        "sampling": {"n": 4, "temperature": 1.0, "max_new_tokens": 4}, "eval": {"every_steps": 0},
        "use_reference": False, "kl": {"usage": "none"},
    })
    roles["trainer"].update(count=2, node=[0, "node2"])  # two FSDP ranks, one per node
    roles["generator"]["node"] = "node2"
    path = folder / "grpo.yaml"
    path.write_text(yaml.safe_dump(topology, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def grpo(cluster: SlurmCluster, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A GRPO run of one step, submitted: (its job id, its run directory)."""
    folder = tmp_path_factory.mktemp("grpo")
    build(folder / "arith", seed=0, quick=True)
    run_dir = folder / "run"
    return job_of(troupe_on(cluster, "submit", str(grpo_topology(folder, folder / "arith")), "--nodes", "2",
                            "--run-dir", str(run_dir))), run_dir


def test_grpo_trains_with_trainer_ranks_on_both_nodes_and_weights_crossing_to_the_generator(
        cluster: SlurmCluster, grpo: tuple[str, Path]) -> None:
    job, run_dir = grpo
    wait_for_job_end(cluster, run_dir, job, timeout=240)
    assert json.loads((run_dir / "registry.json").read_text())["state"] == "finished", job_output(run_dir)
    steps = [record for record in read_metrics(run_dir) if "train/loss" in record]
    assert [record["weights/version"] for record in steps] == [1]
    assert "--- trainer-0 runs on node1 " in (run_dir / "logs" / "trainer-0.stderr").read_text()
    assert "--- trainer-1 runs on node2 " in (run_dir / "logs" / "trainer-1.stderr").read_text()
    assert "--- generator-0 runs on node2 " in (run_dir / "logs" / "generator-0.stderr").read_text()
    listing = troupe_on(cluster, "logs", str(run_dir), "--kind", "actor.started").stdout
    for located in ("trainer-0@node1 ", "trainer-1@node2 ", "generator-0@node2 "):
        assert located in listing, listing
    # node2's namespace has its own loopback: a rendezvous at 127.0.0.1 could not have reached trainer-0
    loaded = (run_dir / "logs" / "generator-0.jsonl").read_text().count('"event":"weights.loaded"')
    assert loaded == 1, "the weights crossed from node1 to node2"
    events, _ = read_logs(run_dir / "logs")
    node1 = f"tcp://{cluster.address('node1')}:"
    published = [e["capabilities"]["trainer_store"] for e in events
                 if e["event"] == "registry.joined" and e["name"] == "trainer-0" and e["capabilities"]]
    assert published and all(address.startswith(node1) for address in published), published  # the ranks' store
    opened = [e["address"] for e in events if e["event"] == "weights.store_opened"]
    assert opened and all(address.startswith(node1) for address in opened), opened  # the weight channel's store
    assert_nothing_left(cluster, run_dir, job)
