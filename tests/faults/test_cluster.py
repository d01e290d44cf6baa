"""The order and loss checks on a real Redis Cluster (three primaries on 127.0.0.1).

The same deployment as the fault scenarios (ingress, two workers, two senders, the
emulator, the reference pipeline), with ``REDIS_CLUSTER=true`` and the partitions spread
over the cluster's nodes, while workers or senders are killed (-9) and restarted: every
message once at the pipeline and once to its user, every chat in order at both stages.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.harness import CI_WORKLOAD, Options, run_and_check
from tests.helpers import redis_server_binary

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(redis_server_binary() is None, reason="needs a redis-server binary"),
]


@pytest.mark.parametrize("name", ["kill_worker", "kill_sender"])
def test_scenario_on_a_redis_cluster(name: str, tmp_path: Path, report_path: Path) -> None:
    report = run_and_check(name, tmp_path, report_path, options=Options(cluster=True))
    assert report.updates == CI_WORKLOAD.total
