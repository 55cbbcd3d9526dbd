"""What troupe asks Slurm: the batch scripts it writes and the step command lines it runs.

These need no Slurm; tests/e2e/test_slurm.py runs them on a real cluster.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from launch.cli import main
from launch.slurm import Allocation, SlurmError, submit_script
from launch.slurm_steps import step_command

REPO = Path(__file__).resolve().parents[3]
MULTI_HOST_MODULES = ["launch/slurm.py", "launch/slurm_steps.py", "launch/slurm_launch.py", "launch/placement.py"]


def test_the_batch_script_runs_the_command_in_the_directory_it_was_submitted_from() -> None:
    script = submit_script(["troupe", "launch", "my topology.yaml", "--slurm"], job_name="troupe-x", nodes=2,
                           output="/shared/run/slurm/job-%j.out", options=["--time=1:00:00", "--partition=gpu"],
                           workdir=Path("/home/me/work"), note="Written by a test.\nSubmit again: sbatch it")
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash"
    assert lines[1:7] == ["#SBATCH --job-name=troupe-x", "#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1",
                          "#SBATCH --output=/shared/run/slurm/job-%j.out", "#SBATCH --time=1:00:00",
                          "#SBATCH --partition=gpu"]
    assert "# Submit again: sbatch it" in lines and "cd /home/me/work" in lines
    assert shlex.split(lines[-1]) == ["exec", "troupe", "launch", "my topology.yaml", "--slurm"]


def test_a_step_runs_one_task_on_its_node_sharing_the_jobs_cpus() -> None:
    allocation = Allocation("77", ["n1", "n2"], {"n1": "10.0.0.1", "n2": "10.0.0.2"}, "n1")
    command = step_command(allocation, "n2", "troupe.run.generator-0", 0, ["python", "-m", "runtime.host"])
    assert command[:8] == ["srun", "--overlap", "--nodes=1", "--ntasks=1", "--nodelist=n2",
                           "--job-name=troupe.run.generator-0", "--jobid=77", "--quiet"]
    assert command[8:] == ["python", "-m", "runtime.host"]
    assert "--gpus=2" in step_command(allocation, "n1", "s", 2, ["python"])


def test_launch_slurm_outside_an_allocation_says_how_to_get_one() -> None:
    with pytest.raises(SlurmError, match="troupe submit TOPOLOGY --nodes N"):
        Allocation.current({})


def test_no_module_of_the_multi_host_path_names_a_loopback_address() -> None:
    for module in MULTI_HOST_MODULES:
        text = (REPO / module).read_text()
        assert not re.search(r"127\.0\.0\.1|localhost|::1", text), f"{module} names a loopback address"


def test_only_submit_passes_options_it_does_not_know_on_to_sbatch(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["validate", str(REPO / "examples/pipeline.yaml"), "--time=1:00:00"])
    assert "unrecognized arguments: --time=1:00:00" in capsys.readouterr().err
    assert main(["submit", str(REPO / "examples/pipeline.yaml"), "--nodes", "1", "--time=10", "--set", "roles.sink.node=3"]) == 2
    assert "roles.sink.node: node index 3, but the allocation has 1 node" in capsys.readouterr().err


def test_a_launcher_on_another_host_is_running_until_registry_json_records_its_end() -> None:
    from launch.rundir import RunInfo, launcher_alive, launcher_gone

    on_batch_host = RunInfo(run="r", registry="tcp://10.0.0.1:5000", supervisor="tcp://10.0.0.1:5001", launcher_pid=1,
                            host="a-batch-node-that-is-not-this-one", started_at=0.0, state="running")
    assert launcher_alive(on_batch_host) and not launcher_gone(on_batch_host)
    finished = on_batch_host.model_copy(update={"state": "finished"})
    assert not launcher_alive(finished) and not launcher_gone(finished)
