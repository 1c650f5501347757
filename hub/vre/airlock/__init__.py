"""The airlock: reviewed export of results, the one way out of the environment (docs/airlock.md).

* :mod:`.rules`: a project's rules (file types, sizes, CSV rows, reviews required) and their checks;
* :mod:`.store`: session paths resolved in the author's mount table and frozen into hub storage;
* :mod:`.review`: the state machine, who sees and does what, the blinded and consolidation phases;
* :mod:`.record`: the signed release record;
* :mod:`.requests`: one function per action (create, submit, review, release, download, ...), for
  the REST API (``vre.api.airlock``) and the CLI (:mod:`.cli`).

The models are in :mod:`vre.db` with the others (``AirlockRequest``, ``AirlockFile``, ...).
"""
