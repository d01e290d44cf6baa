"""The order and loss checks on a real Redis Cluster (three primaries on 127.0.0.1).

The same deployment as the fault scenarios (ingress, two workers, two senders, the
emulator, the reference pipeline), with ``REDIS_CLUSTER=true`` and the partitions spread
over the cluster's nodes, while workers or senders are killed (-9) and restarted: every
message once at the pipeline and once to its user, every chat in order at both stages.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.faults.harness import SCENARIOS, Options, Workload, run_scenario, show
from tests.helpers import redis_server_binary

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(redis_server_binary() is None, reason="needs a redis-server binary"),
]

SEED = int(os.environ.get("FAULTS_SEED", "1"))
WORKLOAD = Workload(chats=20, per_chat=10, seconds=4.0, seed=SEED)


@pytest.mark.parametrize("name", ["kill_worker", "kill_sender"])
def test_scenario_on_a_redis_cluster(name: str, tmp_path: Path, report_path: Path) -> None:
    scenario = SCENARIOS[name]
    options = Options(cluster=True)
    report, problems = run_scenario(
        scenario,
        tmp_path / name,
        WORKLOAD,
        seed=SEED,
        settle_timeout=45.0,
        report_path=report_path,
        options=options,
    )
    show(report, SEED)
    assert report.updates == WORKLOAD.total
    assert not problems, "\n".join(problems) + "\n" + str(report.details.get("logs", ""))
