"""The batch task's own count of OOM kills (a worker in a pod: its memory cgroup is on its node,
out of the engine's sight), read from the container's cgroup files, v2 then v1."""

from __future__ import annotations

from vre_session.jobs import task


def test_oom_kills_are_read_from_the_containers_own_cgroup(tmp_path, monkeypatch):
    v2, v1 = tmp_path / "memory.events", tmp_path / "memory.oom_control"
    monkeypatch.setattr(task, "OOM_FILES", (str(v2), str(v1)))
    assert task.oom_kills() is None   # neither: unknown, never 0
    v1.write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n")
    assert task.oom_kills() == 3
    v2.write_text("low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\noom_group_kill 0\n")
    assert task.oom_kills() == 2
    v2.write_text("oom_kill lots\n")   # unreadable: the next file
    assert task.oom_kills() == 3


def test_a_job_reports_the_oom_kills_during_its_run(tmp_path, monkeypatch):
    events = tmp_path / "memory.events"
    events.write_text("oom_kill 5\n")
    monkeypatch.setattr(task, "OOM_FILES", (str(events),))
    script = tmp_path / "job.py"
    script.write_text(f"open({str(events)!r}, 'w').write('oom_kill 6\\n')\n")
    spec = {"id": 7, "outdir": str(tmp_path / "out"), "max_runtime_s": 60, "kind": "script", "target": str(script),
            "project": "lung", "user": "ann"}
    result = task.run_job(spec)
    assert result["oom_kills"] == 1, (result, (tmp_path / "out" / "log.txt").read_text())
