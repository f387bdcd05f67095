"""Flower ServerApps driving site ClientApps that run in supervised worker processes.

A tiny in-process ``Grid`` stands in for the coordinator's gRPC one: it serializes each
task with Flower's serde exactly as the session stream will carry it, hands the bytes to
each site's :class:`ClientAppRunner` (a real subprocess per site), and deserializes the
replies. Everything between ServerApp and ClientApp is real.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from flwr.app import ArrayRecord, Context, Message, RecordDict
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.proto.message_pb2 import Message as ProtoMessage
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from insitu.apps.breast_cancer import central_baseline, write_site_csvs
from insitu.errors import InsituError
from insitu.flower import (
    AppLayout,
    RoundEvent,
    app_from_module,
    load_component,
    observe_strategies,
    pack_app,
    unpack_app,
)
from insitu.sandbox import HostLauncher
from site_node.training import ClientAppRunner, build_node_config, error_reply
from site_node.training.runner import DEFAULT_LIMITS, worker_env

pytestmark = pytest.mark.slow

SUPERLINK_NODE = 1
SITES = ("hospital-a", "hospital-b", "hospital-c")


class LocalGrid(Grid):
    """Dispatches each message to the runner of its destination node, in parallel."""

    def __init__(self, runners: dict[int, ClientAppRunner], run_id: int) -> None:
        self._runners = runners
        self._run = Run.create_empty(run_id)
        self._pool = ThreadPoolExecutor(max_workers=len(runners))
        self.sent: list[str] = []

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._runners)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError("strategies here use send_and_receive")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError("strategies here use send_and_receive")

    def _one(self, message: Message) -> Message:
        message.metadata.__dict__["_message_id"] = uuid.uuid4().hex  # flwr has no setter
        task = message_to_proto(message).SerializeToString()
        self.sent.append(message.metadata.message_type)
        try:
            reply = self._runners[message.metadata.dst_node_id].handle(task)
        except InsituError as err:  # what the site daemon does when the runner raises
            reply = error_reply(task, err.public_message())
        return message_from_proto(ProtoMessage.FromString(reply))

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return list(self._pool.map(self._one, list(messages), timeout=timeout))


def _run_federation(
    layout: AppLayout, node_configs: list[dict[str, object]], run_config: dict[str, object],
) -> tuple[Context, list[RoundEvent], list[object], LocalGrid]:
    run_id = 9000 + len(node_configs)
    fused = layout.run_config(run_config)  # type: ignore[arg-type]
    runners = {
        100 + i: ClientAppRunner(
            layout.directory, layout.clientapp, config, run_id, 100 + i,  # type: ignore[arg-type]
            run_config=fused, timeout_s=180,
            # Three workers share a small CI machine: one intra-op thread each.
            launcher=HostLauncher(
                DEFAULT_LIMITS, {**worker_env(), "OMP_NUM_THREADS": "1"}, layout.directory
            ),
        )
        for i, config in enumerate(node_configs)
    }
    grid = LocalGrid(runners, run_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, SUPERLINK_NODE, 1
    server_app = load_component(layout.directory, layout.serverapp)
    assert isinstance(server_app, ServerApp)
    context = Context(run_id, SUPERLINK_NODE, {}, RecordDict(), fused)
    events: list[RoundEvent] = []
    try:
        for runner in runners.values():
            runner.start()
        with observe_strategies(events.append) as results:
            server_app(grid, context)
    finally:
        for runner in runners.values():
            runner.close()
    return context, events, list(results), grid


@pytest.fixture(scope="module")
def bcw_layout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppLayout]:
    # The coordinator runs the code it got as a bundle, exactly what the sites approved.
    bundle = pack_app(app_from_module("insitu.apps.breast_cancer"))
    yield unpack_app(bundle, tmp_path_factory.mktemp("bcw-job") / "app")


def test_breast_cancer_federation_comes_within_3_points_of_central(
    bcw_layout: AppLayout, tmp_path: Path
) -> None:
    rounds, epochs = 5, 5
    data = write_site_csvs(tmp_path / "data", SITES, seed=0)
    configs = [
        dict(build_node_config(i, len(SITES), "bcw", data[site])) for i, site in enumerate(SITES)
    ]
    context, events, results, grid = _run_federation(
        bcw_layout, configs,  # type: ignore[arg-type]
        {"num-server-rounds": rounds, "local-epochs": epochs, "min-nodes": 3},
    )
    assert grid.sent.count("train") == grid.sent.count("evaluate") == rounds * len(SITES)
    train_events = [e for e in events if e.phase == "train"]
    assert [e.server_round for e in train_events] == list(range(1, rounds + 1))
    assert all(e.replies == 3 and e.failures == 0 and e.arrays is not None for e in train_events)
    (result,) = results
    final = context.state.array_records["final-arrays"]
    assert list(final.keys()) == list(result.arrays.keys())  # type: ignore[attr-defined]
    federated = float(result.evaluate_metrics_clientapp[rounds]["eval-acc"])  # type: ignore[attr-defined]
    central = central_baseline(seed=0, sites=SITES, epochs=rounds * epochs)
    print(f"federated accuracy {federated:.4f}, central baseline {central:.4f}")
    assert federated > 0.9
    assert abs(federated - central) <= 0.03


def test_a_site_whose_clientapp_fails_is_counted_and_the_round_completes(
    bcw_layout: AppLayout, tmp_path: Path
) -> None:
    data = write_site_csvs(tmp_path / "data", SITES[:2], seed=0)
    configs = [
        dict(build_node_config(0, 3, "bcw", data[SITES[0]])),
        dict(build_node_config(1, 3, "bcw", data[SITES[1]])),
        dict(build_node_config(2, 3, "bcw", tmp_path / "missing.csv")),  # this site fails
    ]
    _context, events, _results, _grid = _run_federation(
        bcw_layout, configs,  # type: ignore[arg-type]
        {"num-server-rounds": 1, "local-epochs": 1, "min-nodes": 2},
    )
    (train_event,) = [e for e in events if e.phase == "train"]
    assert train_event.replies == 3 and train_event.failures == 1
    assert train_event.arrays is not None  # aggregated from the two healthy sites


def test_bring_your_own_flower_app_runs_unchanged(tmp_path: Path) -> None:
    source = Path(__file__).resolve().parents[1] / "apps" / "byo_quickstart"
    layout = unpack_app(pack_app(source), tmp_path / "app")
    configs = [
        dict(build_node_config(i, 3, "synthetic", tmp_path / "unused.csv")) for i in range(3)
    ]
    _context, events, results, grid = _run_federation(layout, configs, {})  # type: ignore[arg-type]
    assert grid.sent.count("train") == 3 * 3  # num-server-rounds = 3 from its pyproject
    (result,) = results
    assert isinstance(result.arrays, ArrayRecord) and len(result.arrays) == 4  # type: ignore[attr-defined]
    last = result.evaluate_metrics_clientapp[3]  # type: ignore[attr-defined]
    assert float(last["eval_acc"]) > 0.7
    assert all(e.failures == 0 for e in events)
