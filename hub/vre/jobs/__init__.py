"""The batch queue: heavy work (a cohort's preprocessing, hours of GPU training) run in exactly
the restrictions of the project's sessions, kept when the browser closes, and audited.

- ``service``: the queue itself, in the VRE database: submit (with validation), list, cancel,
  re-run, logs and outputs. The hub's REST API (``api``) and the CLI call it.
- ``queue``: the admission rule: per-project quotas and a fair order between members.
- ``engine``: the ``vre-jobs`` process (a JupyterHub-managed service) that admits queued jobs,
  hands them to an executor, follows them and records how they ended.
- ``executor``: how jobs run. ``LocalDaskExecutor`` runs, per project, a Dask scheduler and
  workers as sandboxes rendered from the project's plan (role=worker) inside the project's island;
  ``containers.ContainerDaskExecutor`` (docker) and ``pods.PodDaskExecutor`` (kubernetes) run
  the same as containers and pods, overriding only how a run is launched, found, stopped and
  addressed.
- ``pools``: the shape of a pool (ports, the scheduler's limits, a worker's overhead), which the
  backends render without importing the service; ``inputs``: a job's inputs kept until its
  worker writes them, where the hub cannot (Kubernetes with claims).
"""
