"""The session's jobs client without a hub: how a sweep is cut into requests the service takes."""

import base64

import cloudpickle
import pytest

from vre_session import jobs


def test_a_sweep_is_posted_in_lists_the_service_takes_in_order(monkeypatch):
    monkeypatch.setenv("VRE_PROJECT", "lung")
    posted, refuse = [], {"request": 0}

    def request(method, path, body=None, *, timeout=30):
        assert (method, path) == ("POST", "") and isinstance(body, list) and timeout >= 300
        posted.append(body)
        if len(posted) == refuse["request"]:
            return 400, {"message": f"job 2 of {len(body)}: kind must be one of ..."}
        start = sum(len(b) for b in posted[:-1])
        return 201, {"jobs": [{"id": start + i + 1, "state": "queued"} for i in range(len(body))]}
    monkeypatch.setattr(jobs, "request", request)
    swept = jobs.map_function(abs, range(-1200, 1300), job_kwargs={"cpu": 0.5})
    assert [len(b) for b in posted] == [1000, 1000, 500]
    assert [j.id for j in swept] == list(range(1, 2501))
    first = posted[0][0]
    assert (first["project"], first["kind"], first["target"], first["cpu"]) == ("lung", "function", "abs", 0.5)
    func, args, kwargs = cloudpickle.loads(base64.b64decode(first["payload"]))
    assert func(*args, **kwargs) == 1200 and "lane" not in first

    # large payloads: a list also stays below the service's body limit
    monkeypatch.setattr(jobs, "MAX_SUBMIT_BYTES", 3000)
    posted.clear()
    jobs.map_function(len, [b"x" * 1000] * 5)
    assert [len(b) for b in posted] == [2, 2, 1]

    # a refused part: the error says so, and hands over the jobs queued before it
    monkeypatch.setattr(jobs, "MAX_SUBMIT", 3)
    monkeypatch.setattr(jobs, "MAX_SUBMIT_BYTES", 1 << 20)
    posted.clear()
    refuse["request"] = 2
    with pytest.raises(jobs.JobError, match="^items 4-6 of the sweep: job 2 of 3: .*first 3 jobs were queued") as e:
        jobs.map_function(len, ["a"] * 10)
    assert [j.id for j in e.value.jobs] == [1, 2, 3] and jobs.JobError("x").jobs == ()

    def unreachable(*args, **kw):
        raise ConnectionRefusedError(111, "Connection refused")
    monkeypatch.setattr(jobs, "request", unreachable)
    with pytest.raises(jobs.JobError, match="^items 1-3 of the sweep: no answer from the hub") as e:
        jobs.map_function(len, ["a"] * 3)
    assert e.value.jobs == ()


def cluster_job_9(calls: list, job: dict):
    """The jobs API of a hub for ``dask_client``: job 9 is queued, then reads as ``job``, and a
    cancel cancels it; each request is noted in ``calls``."""
    def request(method, path, body=None, *, timeout=30):
        calls.append((method, path))
        if method == "POST" and path == "":
            return 201, {"id": 9, "state": "queued"}
        if path == "/9/cancel":
            return 200, {"id": 9, "state": "cancelled", "reason": "cancelled"}
        return 200, {"id": 9, **job}
    return request


def test_a_cluster_given_up_on_is_cancelled(monkeypatch):
    """``dask_client`` waits for its workers; given up (its timeout here), it cancels the job,
    whose workers would otherwise hold the project's quota with no client to use them."""
    monkeypatch.setenv("VRE_PROJECT", "lung")
    calls = []
    request = cluster_job_9(calls, {"state": "queued", "reason": "waiting: vre-hostview is restarting"})
    monkeypatch.setattr(jobs, "request", request)
    monkeypatch.setattr(jobs.time, "sleep", lambda s: None)
    with pytest.raises(TimeoutError, match=r"still queued after 0.01 s \(waiting: vre-hostview.*cancelling job 9"):
        jobs.dask_client(2, timeout=0.01)
    assert calls[-1] == ("POST", "/9/cancel") and calls.count(("POST", "/9/cancel")) == 1
    # a cancel that fails is said, beside the first error
    refused = {"/9/cancel": (400, {"message": "job 9 already ended"})}
    monkeypatch.setattr(jobs, "request", lambda m, p, b=None, *, timeout=30: refused.get(p) or request(m, p, b))
    with pytest.raises(TimeoutError) as e:
        jobs.dask_client(2, timeout=0.01)
    assert e.value.__notes__ == ["job 9 could not be cancelled (job 9 already ended): cancel it with "
                                 "`vre-job cancel 9`"]


def test_a_cluster_whose_workers_never_join_closes_its_client_and_is_cancelled(monkeypatch):
    """The job started, yet its workers never reached the scheduler (a real one, on 127.0.0.1,
    with none): ``dask_client`` gives up at its timeout, closes the client it had opened (no
    connection left behind in the kernel) and cancels the job."""
    from distributed import Client, LocalCluster

    monkeypatch.setenv("VRE_PROJECT", "lung")
    opened, calls = [], []

    class Recorded(Client):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            opened.append(self)

    with LocalCluster(n_workers=0, processes=False, protocol="tcp", host="127.0.0.1",
                      dashboard_address=None) as cluster:
        monkeypatch.setattr(jobs, "request", cluster_job_9(calls, {
            "state": "running", "started_at": "2026-12-08T00:00:00Z", "scheduler": cluster.scheduler_address}))
        monkeypatch.setattr("distributed.Client", Recorded)
        with pytest.raises(TimeoutError):
            jobs.dask_client(2, timeout=1)
    assert len(opened) == 1 and opened[0].status == "closed"
    assert calls[-1] == ("POST", "/9/cancel")
