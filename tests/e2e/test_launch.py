"""End to end through the real `troupe` command: launch, ps, attach, logs, stop, failures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections import Counter
from pathlib import Path

import psutil
import yaml

from tests.e2e.cli import TROUPE, ps, run_state, stored_indices, troupe, wait_for, write_topology

def test_validate_reports_every_problem_and_starts_nothing(tmp_path):
    topology = write_topology(tmp_path, items=5)
    ok = troupe("validate", str(topology))
    assert ok.returncode == 0 and "ok: run 'e2e' with producer x1, stage x2, sink x1" in ok.stdout
    bad = troupe("validate", str(topology), "--set", "roles.stage.count=0", "--set", "roles.sink.placement=[gpu:1]",
                 "--set", "roles.producer.config.itemz=3", "--set", "oops")
    assert bad.returncode == 1
    assert "4 problems" in bad.stderr
    for line in ("roles.stage.count: Input should be greater than or equal to 1",
                 "roles.sink.placement: instance 0: 'gpu:1' is not a device",
                 "roles.producer.config.itemz: unknown key (did you mean 'items'?)",
                 "--set oops: write --set dotted.path=value"):
        assert line in bad.stderr, bad.stderr
    assert not (tmp_path / "runs").exists()


def test_a_foreground_run_processes_every_item_exactly_once_and_ends_by_itself(tmp_path, run_dir):
    result = troupe("launch", str(write_topology(tmp_path, items=40)), "--run-dir", str(run_dir), "--no-status")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "every producer instance has finished: stopping the run" in result.stdout
    assert stored_indices(run_dir) == Counter(range(40))
    assert run_state(run_dir) == "finished"
    resolved = yaml.safe_load((run_dir / "topology.yaml").read_text())
    assert resolved["roles"]["stage"]["config"] == {"work_s": 0.01, "sink_role": "sink"}
    assert {p.stem for p in (run_dir / "logs").glob("*.jsonl")} >= {"producer-0", "stage-0", "stage-1", "sink-0", "registry", "supervisor"}


def test_a_detached_run_can_be_listed_grown_inspected_and_stopped(tmp_path, run_dir):
    topology = write_topology(tmp_path, items=20000, interval_s=0.02)
    started = troupe("launch", str(topology), "--run-dir", str(run_dir), "--detach")
    assert started.returncode == 0, started.stderr
    rows = ps(run_dir)
    assert {"producer-0", "stage-0", "stage-1", "sink-0", "supervisor"} <= set(rows)
    for name in ("producer-0", "stage-0", "stage-1", "sink-0"):
        assert rows[name]["state"] == "ready" and psutil.pid_exists(rows[name]["pid"])
        assert rows[name]["restarts"] == 0
    table = troupe("ps", str(run_dir))
    assert "stage-1" in table.stdout and "ready" in table.stdout

    attached = troupe("attach", str(run_dir), "stage")
    assert attached.returncode == 0, attached.stderr
    assert "attached stage-2" in attached.stdout
    assert ps(run_dir)["stage-2"]["state"] == "ready"
    # The new stage gets work without anyone restarting.
    wait_for(lambda: (run_dir / "logs" / "stage-2.jsonl").exists()
             and '"handled"' in (run_dir / "logs" / "stage-2.jsonl").read_text(), 20, "stage-2 to handle items")

    stage_lines = troupe("logs", str(run_dir), "--instance", "stage-2", "--kind", "pipeline.item", "--json")
    events = [json.loads(line) for line in stage_lines.stdout.splitlines()]
    assert events and all(e["actor"] == "stage-2" and e["kind"] == "pipeline.item" for e in events)
    stats = troupe("logs", str(run_dir), "--stats", "--json")
    rows = [json.loads(line) for line in stats.stdout.splitlines()]
    edges = {(row["sender"], row["receiver"], row["kind"]) for row in rows}
    assert ("producer", "stage", "pipeline.item") in edges and ("stage", "sink", "pipeline.store") in edges
    trace_id = events[0]["trace_id"]
    timeline = troupe("logs", str(run_dir), "--trace", trace_id)
    assert timeline.returncode == 0 and "producer-0" in timeline.stdout and "sink-0" in timeline.stdout
    assert troupe("logs", str(run_dir), "--role", "sink", "--since", "1m").returncode == 0

    stopped_one = troupe("stop", str(run_dir), "stage-0")
    assert stopped_one.returncode == 0 and "stage-0 stopped" in stopped_one.stdout
    assert ps(run_dir)["stage-0"]["state"] == "stopped"

    stopped = troupe("stop", str(run_dir))
    assert stopped.returncode == 0, stopped.stderr
    assert run_state(run_dir) == "finished"
    counts = stored_indices(run_dir)
    assert counts and max(counts.values()) == 1, "no item was stored twice"
    assert troupe("ps", str(run_dir)).returncode == 1


def test_a_killed_stage_is_restarted_and_every_item_is_still_processed_exactly_once(tmp_path, run_dir):
    topology = write_topology(tmp_path, items=500, interval_s=0.03)
    assert troupe("launch", str(topology), "--run-dir", str(run_dir), "--detach").returncode == 0
    wait_for(lambda: sum(stored_indices(run_dir).values()) > 40, 30, "some items to be stored")
    victim = ps(run_dir)["stage-1"]["pid"]
    os.kill(victim, signal.SIGKILL)
    restarted = wait_for(lambda: (lambda row: row if row["restarts"] == 1 and row["state"] == "ready" else None)(ps(run_dir)["stage-1"]),
                         30, "stage-1 to be restarted")
    assert restarted["pid"] != victim
    wait_for(lambda: run_state(run_dir) == "finished", 120, "the run to finish")
    assert stored_indices(run_dir) == Counter(range(500)), "every item stored exactly once"
    redelivered = troupe("logs", str(run_dir), "--kind", "work.redelivered", "--json")
    assert all(json.loads(line)["dead"] == "stage-1" for line in redelivered.stdout.splitlines())


def test_a_role_that_cannot_be_restarted_stops_the_run_and_says_why(tmp_path, run_dir):
    topology = write_topology(tmp_path, items=2000, interval_s=0.02, stage_restart={"policy": "never"})
    launcher = subprocess.Popen([TROUPE, "launch", str(topology), "--run-dir", str(run_dir), "--no-status"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (run_dir / "registry.json").exists() and run_state(run_dir) == "running", 60, "the run")
        os.kill(ps(run_dir)["stage-0"]["pid"], signal.SIGKILL)
        out, err = launcher.communicate(timeout=60)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 1
    assert "run e2e FAILED: role stage: stage-0 exited with code -9 and its restart policy is 'never'" in err
    assert "last lines of" in err and "stage-0.stderr" in err
    assert run_state(run_dir) == "failed"


def test_ctrl_c_stops_every_role_in_order_and_leaves_no_process(tmp_path, run_dir):
    topology = write_topology(tmp_path, items=2000, interval_s=0.02)
    launcher = subprocess.Popen([TROUPE, "launch", str(topology), "--run-dir", str(run_dir), "--no-status"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: (run_dir / "registry.json").exists() and run_state(run_dir) == "running", 60, "the run")
    pids = {row["pid"] for row in ps(run_dir).values() if row["pid"]}
    launcher.send_signal(signal.SIGINT)
    out, err = launcher.communicate(timeout=60)
    assert launcher.returncode == 0, err
    assert "interrupted: stopping the run" in out and "run e2e stopped" in out
    assert not [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    stop_order = [json.loads(line)["actor"] for path in (run_dir / "logs").glob("*-0.jsonl")
                  for line in path.read_text().splitlines() if '"actor.stopped"' in line]
    assert set(stop_order) >= {"producer-0", "stage-0", "sink-0"}


def test_a_role_that_does_not_come_up_is_named_with_its_last_log_lines(tmp_path, run_dir):
    topology = write_topology(tmp_path, items=5, extra_roles={"broken": {"entry": "tests.component.actors:FailsToStart"}})
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    result = subprocess.run([TROUPE, "launch", str(topology), "--run-dir", str(run_dir), "--no-status"],
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 1
    assert "startup failed" in result.stderr and "broken-0 (broken) did not come up" in result.stderr
    assert "cannot reach the model directory" in result.stderr


def test_a_second_process_can_attach_instances_that_join_and_get_work(tmp_path, run_dir):
    topology = write_topology(tmp_path, items=2000, interval_s=0.02)
    assert troupe("launch", str(topology), "--run-dir", str(run_dir), "--detach").returncode == 0
    info = json.loads((run_dir / "registry.json").read_text())
    helper = subprocess.Popen([TROUPE, "attach", str(run_dir), "stage", "--here", "--registry", info["registry"]],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: "stage-2" in ps(run_dir), 60, "the attached stage to register")
        wait_for(lambda: (run_dir / "logs" / "stage-2.jsonl").exists()
                 and '"handled"' in (run_dir / "logs" / "stage-2.jsonl").read_text(), 30, "stage-2 to get work")
        assert ps(run_dir)["stage-2"]["restarts"] is None, "not supervised by the launcher"
        helper.send_signal(signal.SIGINT)
        helper.communicate(timeout=60)
        assert helper.returncode == 0
        wait_for(lambda: "stage-2" not in ps(run_dir), 20, "the attached stage to leave")
    finally:
        if helper.poll() is None:
            helper.kill()
        troupe("stop", str(run_dir))
    counts = stored_indices(run_dir)
    assert max(counts.values()) == 1
