"""The kubernetes backend: each (user, project) session is a pod in its project's namespace.

Work in progress (issue 13): the hub configuration selects this spawner for
``backend = "kubernetes"``; rendering and the lifecycle follow.
"""

from __future__ import annotations

from jupyterhub.spawner import Spawner

from .plan_spawner import PlanSpawner


class KubernetesBackendError(RuntimeError):
    """The cluster refused something a session needs, or the plan cannot be rendered; the message
    says what to fix."""


class KubernetesSpawner(PlanSpawner, Spawner):
    """Runs each (user, project) session as a pod in its project's namespace."""

    start_noun = "pod"
    pod_name = ""

    def _launched(self) -> bool:
        return bool(self.pod_name)

    async def _launch(self, plan):
        raise KubernetesBackendError("the kubernetes backend cannot start sessions yet (issue 13)")
