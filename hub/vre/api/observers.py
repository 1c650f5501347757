"""Who posts an observer's records: the node of the pod its token was issued to.

Each per-node observer (``vre.hostview.node``) sends the service-account token the kubelet
projects into its pod for the audience ``vre-observer``. The hub asks the API server about it
(a TokenReview): it must be the observers' service account's (``k8s_observer_service_account``
in ``k8s_hub_namespace``), issued for that audience, and bound to a pod, whose node the API
server names (``authentication.kubernetes.io/node-name``). That node is what the records say,
whatever the post claims: a compromised node can speak only for itself, and no shared secret
exists that one node could lend another (the chart's earlier ``observer_token`` did).

Answers, yes and no, are kept for ``REVIEW_S`` per token (by its hash), so the API server sees
at most one review a minute per observer, and a flood of bad tokens from a session at most one
per distinct token a minute.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

AUDIENCE = "vre-observer"
NODE_NAME = "authentication.kubernetes.io/node-name"
#: Seconds an answer about a token is kept.
REVIEW_S = 60
#: Answers kept at most (the oldest go first).
KEPT = 1024


class ObserverRefused(Exception):
    """The token is not an observer's (the reason, for the log and the 403)."""


class ReviewUnavailable(ObserverRefused):
    """The API server did not answer: nothing is known of the token (not kept; the observer
    keeps its records and posts them again)."""


#: ``review(token)`` -> the TokenReview's status as a dict (``authenticated``, ``user``, ``audiences``, ``error``).
Review = Callable[[str], Awaitable[dict]]


def node_of(status: dict, settings) -> str:
    """The node an observer's reviewed token speaks for, or ObserverRefused."""
    if not settings.k8s_observer_service_account:
        raise ObserverRefused("no observer is configured (k8s_observer_service_account)")
    if not status.get("authenticated"):
        raise ObserverRefused(f"the cluster does not accept the token ({status.get('error') or 'unauthenticated'})")
    if AUDIENCE not in (status.get("audiences") or ()):
        raise ObserverRefused(f"the token is not issued for {AUDIENCE}")
    user = status.get("user") or {}
    expected = f"system:serviceaccount:{settings.k8s_hub_namespace}:{settings.k8s_observer_service_account}"
    if user.get("username") != expected:
        raise ObserverRefused(f"the token is {user.get('username')!r}'s, not the observers' ({expected})")
    nodes = (user.get("extra") or {}).get(NODE_NAME) or []
    if len(nodes) != 1 or not nodes[0]:
        raise ObserverRefused("the token is bound to no pod on a node (an observer's comes from its pod)")
    return str(nodes[0])


class ObserverTokens:
    """The hub's answers about observers' tokens, kept for ``REVIEW_S``."""

    def __init__(self, settings, review: Review):
        self.settings = settings
        self._review = review
        self._kept: OrderedDict[str, tuple[float, str | None, str]] = OrderedDict()  # hash -> (until, node, why not)

    async def node(self, token: str) -> str:
        key = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        kept = self._kept.get(key)
        if kept is None or kept[0] < now:
            try:
                kept = (now + REVIEW_S, node_of(await self._review(token), self.settings), "")
            except ReviewUnavailable:
                raise
            except ObserverRefused as e:
                kept = (now + REVIEW_S, None, str(e))
            self._kept[key] = kept
            self._kept.move_to_end(key)
            while len(self._kept) > KEPT:
                self._kept.popitem(last=False)
        if kept[1] is None:
            raise ObserverRefused(kept[2])
        return kept[1]


def cluster_review(settings) -> Review:
    """``review`` that asks the cluster's API server (the hub's service account may create
    TokenReviews: the chart's RBAC). An API that does not answer is ReviewUnavailable."""
    import aiohttp
    from kubernetes_asyncio.client import ApiClient, AuthenticationV1Api, V1TokenReview, V1TokenReviewSpec
    from kubernetes_asyncio.client.exceptions import ApiException

    from ..backends.kubernetes import KubernetesBackendError, api_reason, load_client_config

    client: list[ApiClient] = []

    async def review(token: str) -> dict:
        body = V1TokenReview(spec=V1TokenReviewSpec(token=token, audiences=[AUDIENCE]))
        try:
            if not client:
                await load_client_config(settings)
                client.append(ApiClient())
            answer = await AuthenticationV1Api(client[0]).create_token_review(body)
        except ApiException as e:
            raise ReviewUnavailable(f"the cluster's API did not review the token ({api_reason(e)})") from None
        except (OSError, TimeoutError, aiohttp.ClientError, KubernetesBackendError) as e:
            raise ReviewUnavailable(f"the cluster's API did not review the token "
                                    f"({e or type(e).__name__})") from None
        return client[0].sanitize_for_serialization(answer.status) or {}

    return review
