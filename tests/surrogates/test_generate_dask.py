"""Dataset generation on a Dask cluster: real Wake-T runs on a ``LocalCluster``, a worker
killed in the middle of a run, and a dataset resumed across sessions.

The cluster has one worker process behind a nanny. Killing the worker (SIGKILL) while it
runs a sample is what a pre-empted SLURM job does to a dask-jobqueue worker: the nanny
starts a new worker, the scheduler hands it the lost sample, and generation finishes with
every row computed and nothing run twice into the table.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from accelrl.surrogates.dataset import load_dataset
from accelrl.surrogates.generate import GenerateReport, generate
from accelrl.surrogates.spec import DatasetSpec

distributed = pytest.importorskip("distributed")
pytest.importorskip("wake_t")


def _worker_pid(client: Any) -> int:
    (pid,) = client.run(os.getpid).values()
    return int(pid)


def _busy(client: Any) -> bool:
    return any(client.processing().values())


def test_generation_on_a_local_cluster_survives_a_killed_worker(
    spec_dict: dict[str, Any], tmp_path: Path
) -> None:
    spec_dict["design"]["n_samples"] = 2
    spec_dict["fidelity"]["n_particles"] = 1000
    spec = DatasetSpec.from_dict(spec_dict)
    table = tmp_path / "tiny.parquet"
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        address = cluster.scheduler_address
        first = generate(spec, table, dask_address=address, limit=1, progress=False)
        assert (first.n_run, first.status_counts["ok"]) == (1, 1)

        pid = _worker_pid(client)
        result: dict[str, GenerateReport | BaseException] = {}

        def resume() -> None:
            try:
                result["report"] = generate(spec, table, dask_address=address, progress=False)
            except BaseException as err:  # re-raised in the test thread
                result["report"] = err

        thread = threading.Thread(target=resume)
        thread.start()
        deadline = time.monotonic() + 30.0
        while not _busy(client) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _busy(client), "no sample started on the cluster within 30 s"
        os.kill(pid, signal.SIGKILL)  # the worker dies in the middle of a Wake-T run
        thread.join(timeout=120.0)
        assert not thread.is_alive(), "generation did not finish after the worker was killed"
        report = result["report"]
        if isinstance(report, BaseException):
            raise report
        assert _worker_pid(client) != pid  # the nanny started a new worker

    assert report.n_existing == 1 and report.n_run == 1
    assert report.status_counts == {"ok": 2, "no_beam": 0, "failed": 0}
    dataset = load_dataset(table)
    assert sorted(dataset.table["sample"].tolist()) == [0, 1]
    sessions = dataset.meta["generation"]["sessions"]
    assert [s["executor"] for s in sessions] == ["dask", "dask"]
    assert [s["n_run"] for s in sessions] == [1, 1]
