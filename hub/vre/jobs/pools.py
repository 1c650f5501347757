"""The shape of a project's batch pool, shared by the executors and the backends that render its
pods (imports nothing, so a backend can know it without importing the job service)."""

#: The Dask scheduler's port and its dashboard's, inside the pool's island.
SCHEDULER_PORT, DASHBOARD_PORT = 8786, 8787
#: The Dask worker process itself, on top of the job's memory.
WORKER_OVERHEAD_MB = 384
#: What a pool's scheduler may use (it runs no job).
SCHEDULER_LIMITS = dict(cpu=1.0, mem_mb=1024, pids_max=1024)
#: The most workers one cluster job may ask for.
MAX_CLUSTER_WORKERS = 16
