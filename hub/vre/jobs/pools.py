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
#: ``Job.worker`` of a job run as a Kubernetes Job (``jobs.kubejobs``): this prefix and the Job's name.
KUBE_WORKER = "k8s-job/"
#: Kinds of jobs that need no Dask: under ``k8s_job_runner = "jobs"`` each runs as a Kubernetes Job.
KUBE_JOB_KINDS = ("notebook", "script", "function")
#: What a job's inputs (a function's payload, a held job's code) may weigh where they travel in
#: its Kubernetes Job's Secret (at most 1 MiB, base64 and the run's files included).
KUBE_JOB_INPUTS_MAX = 600 * 1024


def as_kubernetes_job(settings, kind: str) -> bool:
    """Whether a job of ``kind`` runs as a Kubernetes Job of its own (``k8s_job_runner``)."""
    return settings.backend == "kubernetes" and settings.k8s_job_runner == "jobs" and kind in KUBE_JOB_KINDS


def is_kube_job(worker: str) -> bool:
    """Whether ``Job.worker`` names a Kubernetes Job (else Dask workers, or none yet)."""
    return worker.startswith(KUBE_WORKER)
