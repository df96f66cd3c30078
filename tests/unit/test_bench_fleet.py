"""The benchmarks' fleet of live grants is what the engine itself would have left."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlmodel import select

from bench import fleet as fleets
from bench.stats import percentile
from jitcore.db import Store, make_engine
from jitcore.model import Grant, GrantState, RequestStatus, utcnow
from jitcore.policy import load_policy_file
from sandbox.arm.server import ArmServer


def test_a_fleet_seeds_the_arm_stand_in_and_the_database_alike(tmp_path: Path) -> None:
    fleet = fleets.Fleet(vms=3, grants=7)
    ends = fleets.spread_ends(7, utcnow() + timedelta(hours=1), 60)
    url = f"sqlite:///{tmp_path / 'jitbot.db'}"

    seed, policy = fleets.build(fleet, tmp_path, url, ends)

    engine = make_engine(url)
    store = Store(engine)
    active = store.requests_with_status((RequestStatus.ACTIVE,))
    with store.session() as session:
        grants = list(session.exec(select(Grant)))
    engine.dispose()
    assert len(active) == 7
    assert sorted(g.request_id for g in grants) == [r.id for r in active]
    assert {g.state for g in grants} == {GrantState.PRESENT}
    assert [p.name for p in load_policy_file(policy)] == ["bench"]
    in_nsg = {rule["name"] for rule in ArmServer(seed=seed).snapshot_nsg(fleet.nsg_id(0))}
    assert in_nsg == {
        "jitbot-deny-vm-bench-000",
        "jitbot-allow-r1",
        "jitbot-allow-r4",
        "jitbot-allow-r7",
    }


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]

    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile([3.0], 99) == 3.0
