"""A session's files as the hub sees them: on this machine, or on a project's claims through a
claims reader (Kubernetes with ``k8s_storage = "pvc"``, where the hub cannot mount them).

- ``files``: the questions asked (the entry, a link's target, a folder, a file's bytes), answered
  locally (``LOCAL``) or by a reader (``ReaderFiles``);
- ``reader``: the reader itself, standard library only, run in a pod of the project's namespace;
- ``pods``: the reader's pod and its lifecycle (``ClaimFiles`` starts one when first asked).
"""
