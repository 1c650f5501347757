"""hostview's aggregation: opens -> at most (#series + #minutes) records per reader, counts exact."""

from __future__ import annotations

from vre.hostview.aggregate import MAX_SERIES_LISTED, Aggregator, Reader, series_of
from vre.hostview.watcher import first_list_event, first_read_event, summary_event

T0 = 1_800_000_000.0 - 1_800_000_000.0 % 60   # a minute's start
ALICE = Reader(session="alice-lung-1", user="alice", project="lung", dataset="ct", target="/data/ct")


def test_series_is_the_parent_directory_relative_to_the_dataset():
    assert series_of(ALICE, "/data/ct/p1/study/s3/001.dcm") == "p1/study/s3"
    assert series_of(ALICE, "/data/ct/table.csv") == "."


def test_paths_of_a_run_that_ended_are_given_from_the_mount_root():
    agg = Aggregator()
    first = agg.record(ALICE, "/p1/s3/001.dcm", T0)        # read after the sandbox exited
    assert (first.path, first.series) == ("/data/ct/p1/s3/001.dcm", "p1/s3")
    assert agg.record(ALICE, "/data/ct/p1/s3/002.dcm", T0) is None


def test_100000_opens_give_one_record_per_series_and_minute():
    agg = Aggregator()
    firsts = []
    for i in range(100_000):  # 10 series, over 3 minutes
        first = agg.record(ALICE, f"/data/ct/p{i % 2}/s{i % 10}/{i % 97:03}.dcm", T0 + i * 170 / 100_000)
        if first:
            firsts.append(first)
    summaries = agg.flush()
    assert len(firsts) == 10 and len({f.series for f in firsts}) == 10
    assert len(summaries) == 3
    assert sum(s.opens for s in summaries) == 100_000
    assert all(sum(s.series.values()) + s.unlisted_opens == s.opens for s in summaries)
    assert agg.pending() == 0 and agg.flush() == []


def test_minutes_are_flushed_when_they_end_and_a_session_on_its_own():
    agg = Aggregator()
    bob = Reader(session="bob-lung-2", user="bob", project="lung", dataset="ct", target="/data/ct")
    agg.record(ALICE, "/data/ct/a/1", T0 + 1)
    agg.record(ALICE, "/data/ct/a/2", T0 + 61)
    agg.record(bob, "/data/ct/a/1", T0 + 2)
    assert agg.flush(T0 + 59) == []                      # the first minute is still running
    ended = agg.flush(T0 + 60)
    assert [(s.reader.session, s.opens) for s in ended] == [("alice-lung-1", 1), ("bob-lung-2", 1)]
    assert [s.minute for s in agg.flush(session="alice-lung-1")] == [T0 + 60]
    assert agg.pending() == 0
    # a stopped session is forgotten: a new run of it records its first reads again
    assert agg.record(ALICE, "/data/ct/a/3", T0 + 70) is not None
    assert agg.record(bob, "/data/ct/a/3", T0 + 70) is None


def test_at_most_1000_series_listed_the_rest_counted_within_the_stores_limits():
    agg = Aggregator()
    long = "patient-with-a-very-long-identifier/study-with-a-long-description"
    for s in range(1500):
        for _ in range(1 + (s < 10)):
            agg.record(ALICE, f"/data/ct/{long}/series-{s:05}/1.dcm", T0)
    (summary,) = agg.flush()
    assert summary.opens == 1510
    assert len(summary.series) == MAX_SERIES_LISTED
    assert summary.unlisted_series == 500 and summary.unlisted_opens == 500
    assert all(name.endswith(f"series-{s:05}") for s, name in zip(range(10), summary.series))  # most read first
    event = summary_event(summary, T0 + 60)          # validated like any event: fits the store
    assert event.action == "dataset.read_summary" and event.details["opens"] == 1510
    assert event.actor == "alice" and event.session == "alice-lung-1" and event.dataset == "ct"
    assert event.source == "host"


def test_attribution_of_a_worker_is_its_jobs_user_or_the_project():
    worker = Reader(session="lung-worker-1", user="bob", project="lung", dataset="ct", target="/data/ct",
                    role="worker", job=7)
    agg = Aggregator()
    event = first_read_event(agg.record(worker, "/data/ct/s/1.dcm", T0))
    assert (event.actor, event.actor_role, event.details["job"]) == ("bob", "researcher", 7)
    idle = Reader(session="lung-worker-1", user="bob", project="lung", dataset="ct", target="/data/ct",
                  role="worker")
    event = first_read_event(agg.record(idle, "/data/ct/s/1.dcm", T0))
    assert (event.actor, event.actor_role) == ("lung worker", "service")


def test_a_folder_listed_gives_one_record_per_folder_and_is_counted_each_time():
    agg = Aggregator()
    firsts = [agg.listed(ALICE, p, T0 + i) for i, p in enumerate(
        ["/data/ct", "/data/ct/p1", "/data/ct/p1/", "/data/ct", "/p1/s3", "/"])]   # the last two: run ended
    assert [(f.folder, f.path) for f in firsts if f] == [(".", "/data/ct"), ("p1", "/data/ct/p1"),
                                                           ("p1/s3", "/data/ct/p1/s3")]
    assert agg.record(ALICE, "/data/ct/p1/001.dcm", T0 + 10).series == "p1"   # reads are counted apart
    assert agg.pending() == 7
    (summary,) = agg.flush()
    assert (summary.opens, summary.listings, summary.series) == (1, 6, {"p1": 1})
    event = first_list_event(firsts[1])
    assert (event.action, event.source, event.actor, event.dataset, event.target) == (
        "dataset.list", "host", "alice", "ct", "/data/ct/p1")
    assert event.details["folder"] == "p1" and summary_event(summary, T0 + 60).details["listings"] == 6
    assert agg.flush(session=ALICE.session) == [] and agg.listed(ALICE, "/data/ct", T0 + 70) is not None  # forgotten
