"""``vre-hostview``: dataset reads recorded from the host, outside every session's reach.

``fanotify`` (the kernel binding), ``aggregate`` (opens -> a bounded number of records),
``watcher`` (marks and events), ``registry`` (what is marked, across restarts), ``service`` (the
managed service), ``client`` (the launch gate's and the job engine's side of its socket).
"""
