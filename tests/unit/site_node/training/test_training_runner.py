"""ClientAppRunner: real worker subprocesses running real Flower ClientApps."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from _training_support import PROBE_APP, decode, make_task
from flwr.app import ConfigRecord, RecordDict
from flwr.common.constant import ErrorCode as FlowerErrorCode

from insitu.apps.breast_cancer import write_site_csvs
from insitu.apps.breast_cancer.bcw.task import new_arrays
from insitu.errors import ErrorCode, InsituError
from insitu.flower import app_from_module, read_app
from insitu.sandbox import BwrapLauncher, HostLauncher, SandboxSpec, require_bwrap
from site_node.training import ClientAppRunner, build_node_config, error_reply
from site_node.training.runner import DEFAULT_LIMITS, message_type_allowed, worker_env

RUN_ID = 4242
NODE_ID = 77

Event = tuple[str, str, int, bool]


@pytest.fixture
def events() -> list[Event]:
    return []


@pytest.fixture
def probe(events: list[Event], tmp_path: Path) -> Iterator[ClientAppRunner]:
    runner = ClientAppRunner(
        PROBE_APP,
        "probe.client_app:app",
        # device given, so the probe worker never imports torch (keeps the tests quick)
        build_node_config(1, 3, "probe-data", tmp_path / "probe.csv", device="cpu"),
        RUN_ID,
        NODE_ID,
        run_config=read_app(PROBE_APP).run_config({"greeting": "hi"}),
        timeout_s=20,
        on_message=lambda *event: events.append(event),
        launcher=HostLauncher(
            DEFAULT_LIMITS, {**worker_env(), "INSITU_TEST_SECRET": "do-not-leak"}, PROBE_APP
        ),
    )
    try:
        yield runner
    finally:
        runner.close()


def _task(message_type: str, **kwargs: object) -> bytes:
    return make_task(message_type, run_id=RUN_ID, dst_node_id=NODE_ID, **kwargs)  # type: ignore[arg-type]


def _info(reply: bytes) -> ConfigRecord:
    message = decode(reply)
    assert not message.has_error(), message.error
    return message.content.config_records["info"]


def test_reply_answers_request_and_sees_node_and_run_config(
    probe: ClientAppRunner, events: list[Event], tmp_path: Path
) -> None:
    task = _task("train", message_id="task-1")
    reply = decode(probe.handle(task))
    assert reply.metadata.reply_to_message_id == "task-1"
    assert reply.metadata.src_node_id == NODE_ID
    assert reply.metadata.dst_node_id == 0
    assert reply.metadata.run_id == RUN_ID
    assert reply.metadata.message_type == "train"
    assert reply.metadata.message_id  # set, as flwr's own node runtime does
    info = reply.content.config_records["info"]
    assert info["greeting"] == "hi"
    assert info["partition-id"] == 1 and info["num-partitions"] == 3
    assert info["dataset-path"] == str(tmp_path / "probe.csv")
    assert info["device"] == "cpu"
    assert events[0] == ("in", "train", len(task), True)
    assert events[1][0:2] == ("out", "train") and events[1][3] is True


def test_environment_is_filtered_by_default(tmp_path: Path) -> None:
    os.environ["INSITU_TEST_SECRET"] = "vault-token-like"
    try:
        runner = ClientAppRunner(
            PROBE_APP, "probe.client_app:app",
            build_node_config(0, 1, "d", tmp_path / "d.csv", device="cpu"), RUN_ID, NODE_ID,
        )
        with runner:
            assert _info(runner.handle(_task("evaluate")))["secret-env"] == "<absent>"
    finally:
        del os.environ["INSITU_TEST_SECRET"]


def test_sandboxed_worker_sees_the_app_and_dataset_at_their_inside_paths(tmp_path: Path) -> None:
    data = tmp_path / "d.csv"
    data.write_text("a,b\n1,2\n")
    launcher = BwrapLauncher(
        SandboxSpec(limits=DEFAULT_LIMITS, ro={PROBE_APP: "/app", data: "/data/d/d.csv"},
                    env={"INSITU_TEST_SECRET": "set-in-spec"}),
        bwrap=require_bwrap(),
    )
    runner = ClientAppRunner(
        PROBE_APP, "probe.client_app:app",
        build_node_config(0, 1, "d", launcher.inside(data), device="cpu"), RUN_ID, NODE_ID,
        launcher=launcher,
    )
    with runner:
        info = _info(runner.handle(_task("train")))
        assert info["secret-env"] == "set-in-spec"
        assert info["dataset-path"] == "/data/d/d.csv"


def test_state_persists_across_messages_and_stdout_prints_are_harmless(
    probe: ClientAppRunner,
) -> None:
    counts = [_info(probe.handle(_task(t)))["count"] for t in ("train", "query", "evaluate")]
    assert counts == [1, 2, 3]


@pytest.mark.parametrize(
    "message_type", ["system", "train.bad-action", "reconnect", "train.a.b", "", "query.__x__z!"]
)
def test_refused_type_never_reaches_the_worker(
    probe: ClientAppRunner, events: list[Event], message_type: str
) -> None:
    with pytest.raises(InsituError) as caught:
        probe.handle(_task("train", raw_message_type=message_type))
    assert caught.value.code in (ErrorCode.PERMISSION_DENIED, ErrorCode.INVALID_ARGUMENT)
    assert probe.starts == 0 and probe.pid is None  # no worker was ever started
    assert events and events[-1][0] == "in" and events[-1][3] is False


def test_site_can_narrow_the_allowed_categories(tmp_path: Path) -> None:
    runner = ClientAppRunner(
        PROBE_APP, "probe.client_app:app",
        build_node_config(0, 1, "d", tmp_path / "d.csv", device="cpu"), RUN_ID, NODE_ID,
        allowed_categories=frozenset({"train", "evaluate"}),
    )
    with runner, pytest.raises(InsituError, match="not allowed") as caught:
        runner.handle(_task("query"))
    assert caught.value.code is ErrorCode.PERMISSION_DENIED
    assert runner.starts == 0


def test_message_for_another_run_or_node_is_refused(probe: ClientAppRunner) -> None:
    for task in (
        make_task("train", run_id=RUN_ID + 1, dst_node_id=NODE_ID),
        make_task("train", run_id=RUN_ID, dst_node_id=NODE_ID + 1),
    ):
        with pytest.raises(InsituError) as caught:
            probe.handle(task)
        assert caught.value.code is ErrorCode.PERMISSION_DENIED
    assert probe.starts == 0


def test_garbage_and_replies_are_not_tasks(probe: ClientAppRunner) -> None:
    with pytest.raises(InsituError) as caught:
        probe.handle(b"\xff\xff not a protobuf")
    assert caught.value.code is ErrorCode.INVALID_ARGUMENT
    with pytest.raises(InsituError, match="instruction"):
        probe.handle(_task("train", message_id=""))
    assert probe.starts == 0


def test_audit_failure_fails_closed(tmp_path: Path) -> None:
    def audit(direction: str, message_type: str, size: int, ok: bool) -> None:
        raise RuntimeError("audit log unavailable")

    runner = ClientAppRunner(
        PROBE_APP, "probe.client_app:app",
        build_node_config(0, 1, "d", tmp_path / "d.csv", device="cpu"), RUN_ID, NODE_ID,
        on_message=audit,
    )
    with runner, pytest.raises(RuntimeError, match="audit log unavailable"):
        runner.handle(_task("train"))
    assert runner.starts == 0


def test_crashed_worker_is_restarted_with_the_last_good_state(probe: ClientAppRunner) -> None:
    assert _info(probe.handle(_task("train")))["count"] == 1
    first_pid = probe.pid
    crash = _task("query.crash")
    with pytest.raises(InsituError, match="exited with code 3") as caught:
        probe.handle(crash)
    assert caught.value.code is ErrorCode.UNAVAILABLE
    # The daemon can still answer the coordinator at once with a Flower error reply.
    failed = decode(error_reply(crash, "worker crashed"))
    assert failed.has_error() and failed.error.code == FlowerErrorCode.CLIENT_APP_CRASHED
    info = _info(probe.handle(_task("train")))
    assert info["count"] == 2  # state from before the crash, not lost and not double-counted
    assert info["pid"] != first_pid and probe.starts == 2


def test_hung_worker_is_killed_on_timeout(probe: ClientAppRunner) -> None:
    probe.timeout_s = 2
    assert _info(probe.handle(_task("train")))["count"] == 1
    hung_pid = probe.pid
    with pytest.raises(InsituError, match=r"did not answer query\.hang message") as caught:
        probe.handle(_task("query.hang"))
    assert caught.value.code is ErrorCode.DEADLINE_EXCEEDED
    assert hung_pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(hung_pid, 0)  # really gone (reaped), not left running
    probe.timeout_s = 20
    assert _info(probe.handle(_task("train")))["count"] == 2


def test_raising_clientapp_gives_flower_error_reply_without_its_message(
    probe: ClientAppRunner, events: list[Event]
) -> None:
    reply = decode(probe.handle(_task("query.boom", message_id="boom-1")))
    assert reply.has_error()
    assert reply.metadata.reply_to_message_id == "boom-1"
    assert reply.error.code == FlowerErrorCode.CLIENT_APP_RAISED_EXCEPTION
    assert "KeyError" in reply.error.reason
    assert "4711" not in reply.error.reason  # exception text may quote local data
    assert events[-1][0] == "out" and events[-1][3] is False
    assert _info(probe.handle(_task("train")))["count"] == 1  # failed message rolled back


def test_forged_reply_is_refused(probe: ClientAppRunner) -> None:
    with pytest.raises(InsituError, match="src_node_id") as caught:
        probe.handle(_task("query.forge"))
    assert caught.value.code is ErrorCode.INTEGRITY


def test_app_that_does_not_load_is_a_precise_error(tmp_path: Path) -> None:
    runner = ClientAppRunner(
        PROBE_APP, "probe.client_app:nope",
        build_node_config(0, 1, "d", tmp_path / "d.csv", device="cpu"), RUN_ID, NODE_ID,
    )
    with runner, pytest.raises(InsituError, match=r"probe\.client_app:nope") as caught:
        runner.handle(_task("train"))
    assert caught.value.code is ErrorCode.INVALID_ARGUMENT
    not_an_app = ClientAppRunner(
        PROBE_APP, "probe.server_app:app",
        build_node_config(0, 1, "d", tmp_path / "d.csv", device="cpu"), RUN_ID, NODE_ID,
    )
    with not_an_app, pytest.raises(InsituError, match="not a flwr ClientApp"):
        not_an_app.handle(_task("train"))


def test_closed_runner_refuses(probe: ClientAppRunner) -> None:
    probe.close()
    with pytest.raises(InsituError) as caught:
        probe.handle(_task("train"))
    assert caught.value.code is ErrorCode.FAILED_PRECONDITION


def test_node_config_must_carry_partition_keys(tmp_path: Path) -> None:
    with pytest.raises(InsituError, match="partition-id"):
        ClientAppRunner(PROBE_APP, "probe.client_app:app", {"dataset-path": "x"}, 1, 2)
    with pytest.raises(InsituError, match="outside"):
        build_node_config(3, 3, "d", tmp_path)


def test_message_type_grammar() -> None:
    assert message_type_allowed("train")
    assert message_type_allowed("evaluate.custom_action")
    assert not message_type_allowed("system")
    assert not message_type_allowed("train.")
    assert not message_type_allowed("train.1abc")
    assert not message_type_allowed("query", frozenset({"train"}))


# -- the real breast-cancer ClientApp ----------------------------------------------------


@pytest.fixture(scope="module")
def bcw_runner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClientAppRunner]:
    data = write_site_csvs(tmp_path_factory.mktemp("bcw"), ["hospital-a", "hospital-b"], seed=1)
    layout = read_app(app_from_module("insitu.apps.breast_cancer"))
    runner = ClientAppRunner(
        layout.directory, layout.clientapp,
        build_node_config(0, 2, "bcw", data["hospital-a"]), RUN_ID, NODE_ID,
        run_config=layout.run_config({"local-epochs": 2, "batch-size": 16}),
        timeout_s=120,
    )
    try:
        yield runner
    finally:
        runner.close()


def _model_task(message_type: str, arrays: object, **config: object) -> bytes:
    content = RecordDict({"arrays": arrays, "config": ConfigRecord(config)})  # type: ignore[dict-item]
    return _task(message_type, content=content)


def test_breast_cancer_train_then_evaluate(bcw_runner: ClientAppRunner) -> None:
    initial = new_arrays(0)
    reply = decode(bcw_runner.handle(_model_task("train", initial, **{"server-round": 1})))
    assert not reply.has_error(), reply.error
    metrics = reply.content.metric_records["metrics"]
    assert metrics["num-examples"] > 50 and metrics["train-loss"] > 0
    assert "dp-epsilon" not in metrics
    trained = reply.content.array_records["arrays"]
    assert list(trained.keys()) == list(initial.keys())
    assert any(
        (a.numpy() != b.numpy()).any()
        for a, b in zip(trained.values(), initial.values(), strict=True)
    )
    evaluated = decode(bcw_runner.handle(_model_task("evaluate", trained)))
    eval_metrics = evaluated.content.metric_records["metrics"]
    assert eval_metrics["eval-acc"] > 0.8  # two epochs on real data already separate well
    assert eval_metrics["num-examples"] > 10


def test_a_sandbox_limit_ends_the_worker_and_the_next_message_gets_a_fresh_one(
    tmp_path: Path,
) -> None:
    limits = replace(DEFAULT_LIMITS, cpu_seconds=2, memory_mb=1024)
    launcher = BwrapLauncher(SandboxSpec(limits=limits, ro={PROBE_APP: "/app"}),
                             bwrap=require_bwrap())
    runner = ClientAppRunner(
        PROBE_APP, "probe.client_app:app",
        build_node_config(0, 1, "d", "/data/none.csv", device="cpu"), RUN_ID, NODE_ID,
        launcher=launcher, timeout_s=60,
    )
    with runner:
        runner.start()
        first = runner.pid
        with pytest.raises(InsituError, match="CPU time limit") as err:
            runner.handle(_task("query.spin"))
        assert err.value.code is ErrorCode.RESOURCE_EXHAUSTED
        assert _info(runner.handle(_task("train")))["count"] == 1
        assert runner.pid != first and runner.starts == 2
