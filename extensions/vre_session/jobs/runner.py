"""Runs one batch job inside a worker: ``python -m vre_session.jobs.runner <outdir>/.job.json``.

The current directory is the job's output folder in the project workspace. Kinds:

- ``notebook``: papermill executes ``target`` with ``params`` and writes the executed notebook
  here; progress (cells done of all) goes to ``progress.json`` as it runs;
- ``script``: ``target`` runs as ``__main__`` with ``params["args"]`` as its arguments;
- ``function``: ``function.pkl`` (cloudpickle of function, args, kwargs) is called and its return
  value pickled to ``result.pkl``.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import runpy
import sys
import time
from pathlib import Path


def _progress(done: int, total: int) -> None:
    tmp = Path("progress.json.tmp")
    tmp.write_text(json.dumps({"done": done, "total": total, "at": time.time()}))
    tmp.replace("progress.json")


class _CellProgress(logging.Handler):
    """papermill logs "Executing Cell N---" before each cell: turn that into progress.json."""

    def __init__(self, total: int):
        super().__init__()
        self.total = total

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Executing Cell "):
            try:
                _progress(int(message[len("Executing Cell "):].strip("-")) - 1, self.total)
            except ValueError:
                pass


def run_notebook(spec: dict) -> None:
    import nbformat
    import papermill
    from jupyter_client.kernelspec import KernelSpecManager

    source = Path(spec["target"])
    nb = nbformat.read(source, as_version=4)
    total = sum(1 for c in nb.cells if c.cell_type == "code")
    _progress(0, total)
    kernel = nb.metadata.get("kernelspec", {}).get("name")
    if kernel not in KernelSpecManager().find_kernel_specs():
        kernel = "python3"  # a notebook written elsewhere: run it with this environment's Python
    logger = logging.getLogger("papermill")
    logger.addHandler(_CellProgress(total))
    logger.setLevel(logging.INFO)
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(message)s")
    papermill.execute_notebook(
        str(source), str(Path.cwd() / source.name), parameters=spec.get("params") or {},
        kernel_name=kernel, log_output=True, progress_bar=False, cwd=str(Path.cwd()),
        # the kernel's own chatter (TCP on loopback, the interrupt at shutdown) is not the job's log
        extra_arguments=["--IPKernelApp.log_level=CRITICAL"],
    )
    _progress(total, total)


def run_script(spec: dict) -> None:
    args = [str(a) for a in (spec.get("params") or {}).get("args", [])]
    sys.argv = [spec["target"], *args]
    runpy.run_path(spec["target"], run_name="__main__")


def run_function(spec: dict) -> None:
    import cloudpickle

    with open("function.pkl", "rb") as f:
        func, args, kwargs = cloudpickle.load(f)
    result = func(*args, **kwargs)
    with open("result.pkl.tmp", "wb") as f:
        cloudpickle.dump(result, f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace("result.pkl.tmp", "result.pkl")


KINDS = {"notebook": run_notebook, "script": run_script, "function": run_function}


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[1]).read_text())
    print(f"[vre] {spec['kind']} {spec['target']} (project {spec['project']}, by {spec['user']})", flush=True)
    KINDS[spec["kind"]](spec)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
