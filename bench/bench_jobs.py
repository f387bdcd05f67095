"""Jobs benchmark: the sandboxed ServerApp and concurrent jobs, each against a baseline of
the same run.

One federation for both parts, reused from ``bench_training.Env``: a DevVault, the
coordinator in-process (``max_concurrent_jobs`` 4) and three in-process SiteDaemons
(``job_max_concurrent`` 4) with the breast-cancer app, its small MLP, local-epochs 1.

Parts (``--only`` picks some; both run by default):

  overhead     Round overhead with the ServerApp out of process against in process.
               Out of process is the real path: a submitted job whose ServerApp runs in
               its bubblewrap worker (``run_serverapp_sandboxed``), every Grid call
               crossing the worker's pipes as Flower protobuf. In process (the baseline):
               the same submitted job, but ``coordinator.jobs.run.run_serverapp_sandboxed``
               is replaced for it by a function that loads the same ServerApp with Flower's
               loader and runs it on a thread of the coordinator, directly against the
               job's SessionGrid (what the worker does, minus the process and the pipes),
               returning the same ``ServerAppOutcome``. Everything else (approval, the
               grid, the sites, the model check and registry) is the same code.
               Overhead per round is measured as ``bench_training.py --only round`` does:
               wall time from the train ``SessionGrid.send_and_receive`` to the end of the
               evaluate one, minus the slowest site's time in ``ClientAppRunner.run``,
               median of rounds 2..N. That window starts and ends inside the coordinator's
               grid calls, so it sees the pipe between train and evaluate but not the one
               between rounds; the ``cycle`` figure (train start to the next round's train
               start, minus the same compute, rounds 2..N-1) sees both and is reported
               beside it. Jobs alternate out, in, in, out, ... (``--repeats`` pairs).
               Target: out-of-process round overhead <= 20 ms.
  concurrency  Four small jobs (``--small-rounds`` rounds, seeds 0..3) submitted at once,
               against the same four one after another (submit, wait for success, next).
               Throughput = jobs / seconds from the first submit to the last success.
               Target: concurrent >= 2x sequential. On a 2-core machine the CPU-bound
               part of a job (worker interpreters importing torch and Flower, the ONNX
               check) cannot overlap much: the part prints how many cpus the machine
               kept busy in each mode (from /proc/stat, other work included).

Run: .venv/bin/python bench/bench_jobs.py [--only overhead,concurrency] [--rounds 6]
     [--repeats 2] [--small-rounds 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import statistics
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_training import APP, SITES, Env, Summary, _bounded, header

PARTS = ("overhead", "concurrency")
OVERHEAD_TARGET_MS = 20.0
THROUGHPUT_TARGET = 2.0
CONCURRENT_JOBS = 4
SUCCEEDED = 3  # jobs_pb2.JOB_STATE_SUCCEEDED


# -- round timing (the hooks bench_training's round part uses) -----------------------------


@dataclass
class RoundTimes:
    """Grid exchanges per job and site compute spans, from the two timing hooks."""

    exchanges: dict[str, list[tuple[str, float, float]]] = field(default_factory=dict)
    computes: list[tuple[float, float]] = field(default_factory=list)

    def rounds(self, job_id: str) -> list[tuple[int, float, float, float]]:
        """(round, start, end, compute) per round of ``job_id``: start and end of its grid
        exchanges, compute = per phase the slowest site's ClientAppRunner.run, summed."""
        by_round: dict[str, list[tuple[float, float, float]]] = {}
        for rnd, t0, t1 in self.exchanges.get(job_id, []):
            slowest = max((e - s for s, e in self.computes if t0 <= s <= t1), default=0.0)
            by_round.setdefault(rnd, []).append((t0, t1, slowest))
        return [(int(r), min(x[0] for x in rows), max(x[1] for x in rows),
                 sum(x[2] for x in rows))
                for r, rows in sorted(by_round.items(), key=lambda kv: int(kv[0]))]


@contextmanager
def timing_hooks() -> Iterator[RoundTimes]:
    from coordinator.flower_grid import SessionGrid, round_of
    from site_node.training.runner import ClientAppRunner

    times = RoundTimes()
    lock = threading.Lock()
    orig_sr, orig_run = SessionGrid.send_and_receive, ClientAppRunner.run

    def send_and_receive(self: SessionGrid, messages: Iterable[Any], *,
                         timeout: float | None = None) -> Iterable[Any]:
        msgs = list(messages)
        t0 = time.perf_counter()
        replies = orig_sr(self, msgs, timeout=timeout)
        t1 = time.perf_counter()
        if msgs:
            with lock:
                times.exchanges.setdefault(self.job_id, []).append((round_of(msgs[0]), t0, t1))
        return replies

    def run(self: ClientAppRunner, request: Any, data: bytes | None = None) -> Any:
        t0 = time.perf_counter()
        try:
            return orig_run(self, request, data)
        finally:
            with lock:
                times.computes.append((t0, time.perf_counter()))

    SessionGrid.send_and_receive = send_and_receive  # type: ignore[method-assign]
    ClientAppRunner.run = run  # type: ignore[method-assign]
    try:
        yield times
    finally:
        SessionGrid.send_and_receive = orig_sr  # type: ignore[method-assign]
        ClientAppRunner.run = orig_run  # type: ignore[method-assign]


# -- the in-process ServerApp (the baseline) -----------------------------------------------


def run_serverapp_in_process(
    *,
    app_dir: Path,
    serverapp: str,
    onnx_export: str | None,
    run_id: int,
    job_id: str,
    run_config: Mapping[str, Any],
    grid: Any,
    wall_s: float,
    cancel: threading.Event | None = None,
    **_unused: Any,  # launcher, audit, log_path, max_update_bytes: the sandbox's concerns
) -> Any:
    """What ``coordinator.serverapp.worker`` does, on a thread of this process and against
    ``grid`` itself: Flower's ``run_serverapp`` under ``observe_strategies``, then the ONNX
    export; the same ``ServerAppOutcome`` as ``run_serverapp_sandboxed``. A benchmark
    baseline only: submitted code beside the coordinator's keys is what the sandbox
    prevents."""
    from flwr.app import Context, RecordDict
    from flwr.server.run_serverapp import run as run_serverapp

    from coordinator.flower_compat import SUPERLINK_NODE_ID, set_task_identity
    from coordinator.serverapp import ServerAppOutcome
    from insitu.errors import ErrorCode, InsituError
    from insitu.flower.bundle import load_component
    from insitu.flower.observe import observe_strategies

    box: dict[str, Any] = {}

    def serve() -> None:
        try:
            set_task_identity(run_id)  # process-global: one in-process ServerApp at a time
            context = Context(run_id=run_id, node_id=SUPERLINK_NODE_ID, node_config={},
                              state=RecordDict(), run_config=dict(run_config))
            with observe_strategies() as results:
                run_serverapp(grid=grid, context=context, server_app_dir=str(app_dir),
                              server_app_attr=serverapp)
            arrays = results[-1].arrays if results else None
            onnx = b""
            if arrays is not None and len(arrays) and onnx_export:
                onnx = bytes(load_component(app_dir, onnx_export)(arrays))
            # As the host: no RESULT frame (None) unless the strategy returned arrays.
            box["outcome"] = ServerAppOutcome(arrays if arrays is not None and len(arrays)
                                              else None, onnx)
        except BaseException as e:  # handed to the job slot below
            box["error"] = e

    t = threading.Thread(target=serve, name=f"serverapp-inproc-{job_id}", daemon=True)
    t.start()
    t.join(wall_s)
    if t.is_alive():  # a thread cannot be killed: the benchmark's own limits are far lower
        raise InsituError(ErrorCode.DEADLINE_EXCEEDED, "in-process ServerApp overran")
    if "error" in box:
        err = box["error"]
        raise InsituError(ErrorCode.FAILED_PRECONDITION,
                          f"in-process ServerApp raised {type(err).__name__}: {err}") from err
    if cancel is not None and cancel.is_set():
        from coordinator.serverapp import ServerAppCancelled

        raise ServerAppCancelled(detail="job cancelled")
    return box["outcome"]


@contextmanager
def serverapp_in_process() -> Iterator[None]:
    """Jobs started inside the block run their ServerApp in process."""
    import coordinator.jobs.run as job_run

    if not hasattr(job_run, "run_serverapp_sandboxed"):
        raise RuntimeError("coordinator.jobs.run no longer calls run_serverapp_sandboxed by "
                           "that name: the in-process baseline cannot be swapped in")
    original = job_run.run_serverapp_sandboxed
    job_run.run_serverapp_sandboxed = run_serverapp_in_process
    try:
        yield
    finally:
        job_run.run_serverapp_sandboxed = original


# -- sites and jobs ------------------------------------------------------------------------


@contextmanager
def running_sites(env: Env, notes: list[str]) -> Iterator[None]:
    """The three SiteDaemons, each allowing CONCURRENT_JOBS jobs at once."""
    from site_node.daemon import SiteDaemon

    daemons: list[tuple[Any, threading.Thread]] = []
    try:
        for site in SITES:
            settings = env.enrol(site, env.csvs[site])
            if hasattr(settings, "job_max_concurrent"):
                settings = dataclasses.replace(settings, job_max_concurrent=CONCURRENT_JOBS)
            elif site == SITES[0]:
                notes.append("site_node.settings has no job_max_concurrent: sites run with "
                             "their built-in job limit")
            d = SiteDaemon(settings)
            t = threading.Thread(target=d.run, name=f"site-{site}", daemon=True)
            t.start()
            daemons.append((d, t))
        env.wait_connected(SITES)
        yield
    finally:
        for d, _t in daemons:
            d.stop()
        for _d, t in daemons:
            t.join(20)


def run_job(env: Env, *, rounds: int, seed: int, model: str, timeout: float) -> tuple[str, float]:
    """Submit one breast-cancer job on all sites; wait for success. (job id, seconds)."""
    t0 = time.perf_counter()
    job = env.engineer.submit_job(APP, {s: "bcw" for s in SITES}, rounds=rounds,
                                  model_name=model,
                                  run_config={"local-epochs": 1, "seed": seed})
    final = None
    for ev in env.engineer.watch_job(job.job_id, timeout=timeout):
        if ev.HasField("snapshot"):
            final = ev.snapshot
    took = time.perf_counter() - t0
    if final is None or final.state != SUCCEEDED:
        raise RuntimeError(f"job {job.job_id} did not succeed (state "
                           f"{final.state if final else '?'}): "
                           f"{final.error if final else 'no snapshot'}")
    return job.job_id, took


# -- overhead ------------------------------------------------------------------------------


@dataclass
class SideTimes:
    round_ov: list[float] = field(default_factory=list)  # rounds 2..N of every job, seconds
    cycle_ov: list[float] = field(default_factory=list)  # rounds 2..N-1
    job_s: list[float] = field(default_factory=list)


def part_overhead(args: argparse.Namespace, env: Env, out: Summary) -> None:
    header(f"overhead: ServerApp out of process vs in process, 3 sites, {args.rounds} rounds, "
           f"local-epochs 1, {args.repeats} pair(s)")
    sides = {"out": SideTimes(), "in": SideTimes()}
    order = [s for i in range(args.repeats) for s in (("out", "in") if i % 2 == 0
                                                      else ("in", "out"))]
    print(f"{'side':>4s} {'round':>5s} {'wall ms':>9s} {'compute ms':>11s} {'overhead ms':>12s}"
          f" {'cycle overhead ms':>18s}")
    with timing_hooks() as times:
        for n, side in enumerate(order):
            with ExitStack() as stack:
                if side == "in":
                    stack.enter_context(serverapp_in_process())
                job_id, took = run_job(env, rounds=args.rounds, seed=0,
                                       model=f"bench-overhead-{side}-{n}",
                                       timeout=args.part_timeout)
            st = sides[side]
            st.job_s.append(took)
            rows = times.rounds(job_id)
            if len(rows) != args.rounds:
                raise RuntimeError(f"job {job_id}: timed {len(rows)} rounds, not {args.rounds}")
            for i, (rnd, t0, t1, compute) in enumerate(rows):
                ov = (t1 - t0) - compute
                cycle = (rows[i + 1][1] - t0) - compute if i + 1 < len(rows) else None
                if rnd >= 2:  # round 1 also starts the ClientApp workers
                    st.round_ov.append(ov)
                    if cycle is not None:
                        st.cycle_ov.append(cycle)
                shown = f"{cycle * 1e3:18.1f}" if cycle is not None else f"{'-':>18s}"
                print(f"{side:>4s} {rnd:5d} {(t1 - t0) * 1e3:9.1f} {compute * 1e3:11.1f} "
                      f"{ov * 1e3:12.1f} {shown}")
            print(f"{side:>4s} job {job_id}: {took:.1f} s submit to success")
    med = {s: statistics.median(v.round_ov) * 1e3 for s, v in sides.items()}
    cyc = {s: statistics.median(v.cycle_ov) * 1e3 if v.cycle_ov else float("nan")
           for s, v in sides.items()}
    diff, cdiff = med["out"] - med["in"], cyc["out"] - cyc["in"]
    print(f"median round overhead (rounds 2..{args.rounds}): out of process {med['out']:.1f} ms, "
          f"in process {med['in']:.1f} ms, difference {diff:+.1f} ms   "
          f"target out of process <= {OVERHEAD_TARGET_MS:g} ms")
    print(f"median cycle overhead (train start to next train start, rounds "
          f"2..{args.rounds - 1}): out of process {cyc['out']:.1f} ms, in process "
          f"{cyc['in']:.1f} ms, difference {cdiff:+.1f} ms")
    print(f"job wall (submit to success): out of process "
          f"{statistics.median(sides['out'].job_s):.1f} s, in process "
          f"{statistics.median(sides['in'].job_s):.1f} s")
    out.add("round overhead, ServerApp out of process", f"{med['out']:.1f} ms",
            f"<= {OVERHEAD_TARGET_MS:g} ms",
            "MET" if med["out"] <= OVERHEAD_TARGET_MS else "MISSES")
    out.add("round overhead, in process (baseline)", f"{med['in']:.1f} ms", "report", "-")
    out.add("round overhead, out - in", f"{diff:+.1f} ms", "report", "-")
    out.add("cycle overhead, out | in", f"{cyc['out']:.1f} | {cyc['in']:.1f} ms", "report", "-")
    out.add("cycle overhead, out - in", f"{cdiff:+.1f} ms", "report", "-")


# -- concurrency ---------------------------------------------------------------------------


def part_concurrency(args: argparse.Namespace, env: Env, out: Summary, *, warm: bool) -> None:
    max_jobs = env.coord.jobs.settings.max_concurrent_jobs
    header(f"concurrency: {CONCURRENT_JOBS} jobs of {args.small_rounds} rounds, sequential vs "
           f"concurrent (coordinator max_concurrent_jobs={max_jobs})")
    if max_jobs < CONCURRENT_JOBS:
        raise RuntimeError(f"the coordinator runs {max_jobs} jobs at once, not "
                           f"{CONCURRENT_JOBS}")
    if not warm:  # the first job of a process warms page caches the sequential jobs share
        _, took = run_job(env, rounds=1, seed=99, model="bench-warmup", timeout=args.part_timeout)
        print(f"warm-up job: {took:.1f} s")

    with timing_hooks() as times:
        seq = _batch(args, env, times, "sequential", concurrent=False)
        conc = _batch(args, env, times, "concurrent", concurrent=True)
    seq_tp, conc_tp = CONCURRENT_JOBS / seq.wall, CONCURRENT_JOBS / conc.wall
    ratio = conc_tp / seq_tp
    cpus = os.cpu_count() or 1
    print(f"throughput: sequential {seq_tp:.3f} jobs/s, concurrent {conc_tp:.3f} jobs/s, "
          f"ratio {ratio:.2f}x   target >= {THROUGHPUT_TARGET:g}x")
    # Concurrency can only fill idle cores: with the sequential jobs keeping b of n cpus
    # busy, n / b is about the most it can gain (less when other work shares the machine).
    ceiling = cpus / seq.busy_cpus if seq.busy_cpus > 0 else float("nan")
    print(f"machine cpus busy: sequential {seq.busy_cpus:.2f}, concurrent {conc.busy_cpus:.2f} "
          f"of {cpus}; CPU-bound ceiling about {ceiling:.2f}x")
    out.add("throughput, sequential", f"{seq_tp:.3f} jobs/s", "report", "-")
    out.add(f"throughput, {CONCURRENT_JOBS} concurrent", f"{conc_tp:.3f} jobs/s", "report", "-")
    out.add("throughput, concurrent / sequential", f"{ratio:.2f}x",
            f">= {THROUGHPUT_TARGET:g}x", "MET" if ratio >= THROUGHPUT_TARGET else "MISSES")
    out.add("cpus busy, sequential | concurrent",
            f"{seq.busy_cpus:.2f} | {conc.busy_cpus:.2f} of {cpus}", "report", "-")
    out.add(f"CPU-bound ceiling on {cpus} cpus", f"{ceiling:.2f}x", "report", "-")


@dataclass
class Batch:
    wall: float  # first submit to last success
    busy_cpus: float  # machine-wide, averaged over the batch (other work on it included)


def _cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine since boot, from /proc/stat. Sandboxed
    workers live in their own PID namespaces and are not all reaped by this process, so
    its rusage cannot count them; the machine-wide figure can."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])


def _batch(args: argparse.Namespace, env: Env, times: RoundTimes, mode: str, *,
           concurrent: bool) -> Batch:
    """Run CONCURRENT_JOBS small jobs, at once or one after another; print each job's
    phases: submit to round 1 (approval, ServerApp start), rounds (round 1 includes the
    sites' ClientApp worker starts), last round to success (ServerApp exit, ONNX check,
    signing, registry)."""
    done: list[tuple[int, str, float, float] | None] = [None] * CONCURRENT_JOBS
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            start = time.perf_counter()
            job_id, took = run_job(env, rounds=args.small_rounds, seed=i,
                                   model=f"bench-{mode}-{i}", timeout=args.part_timeout)
            done[i] = (i, job_id, start, start + took)
        except BaseException as e:  # reported below
            errors.append(e)

    (busy0, total0), t0 = _cpu_jiffies(), time.perf_counter()
    if concurrent:
        threads = [threading.Thread(target=one, args=(i,), name=f"job-{i}")
                   for i in range(CONCURRENT_JOBS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:
        for i in range(CONCURRENT_JOBS):
            one(i)
            if errors:
                break
    wall = time.perf_counter() - t0
    busy1, total1 = _cpu_jiffies()
    cpus = os.cpu_count() or 1
    busy = cpus * (busy1 - busy0) / (total1 - total0) if total1 > total0 else float("nan")
    if errors:
        raise errors[0]
    print(f"{mode}: {wall:.1f} s for {CONCURRENT_JOBS} jobs; machine busy {busy:.2f} of "
          f"{cpus} cpus on average")
    print(f"  {'job':>3s} {'submit->round 1 s':>18s} {'rounds s':>9s} {'->success s':>12s} "
          f"{'total s':>8s}")
    for entry in done:
        assert entry is not None
        i, job_id, start, end = entry
        rows = times.rounds(job_id)
        first, last = (rows[0][1], rows[-1][2]) if rows else (end, end)
        print(f"  {i:3d} {first - start:18.1f} {last - first:9.1f} {end - last:12.1f} "
              f"{end - start:8.1f}")
    return Batch(wall, busy)


# -- main ----------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--only", default=",".join(PARTS),
                    help=f"comma-separated parts among {', '.join(PARTS)}")
    ap.add_argument("--rounds", type=int, default=6, help="rounds per job in the overhead part")
    ap.add_argument("--repeats", type=int, default=2,
                    help="(out, in) pairs in the overhead part, alternating order")
    ap.add_argument("--small-rounds", type=int, default=2,
                    help="rounds per job in the concurrency part")
    ap.add_argument("--part-timeout", type=float, default=600.0, help="seconds per part")
    args = ap.parse_args()
    if args.rounds < 3:
        ap.error("--rounds must be >= 3 (round 1 starts the workers; cycles need a next round)")
    import logging

    # Per-round INFO lines drown the report; a filter survives flwr resetting its level.
    logging.getLogger("flwr").addFilter(lambda r: r.levelno >= logging.WARNING)
    # The in-process baseline exports ONNX here, not in a worker whose stderr is the job log
    # (after importing torch, whose log setup would reset the level).
    import torch  # noqa: F401

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    if unknown := [p for p in parts if p not in PARTS]:
        ap.error(f"unknown parts {unknown}; choose among {', '.join(PARTS)}")
    la_start = os.getloadavg()[0]
    print(f"machine: {os.cpu_count()} cpus, load average {la_start:.2f}")
    t_all = time.perf_counter()
    out = Summary()
    notes: list[str] = []
    tmp = Path(tempfile.mkdtemp(prefix="insitu-bench-jobs-"))
    with ExitStack() as stack:
        env = Env(stack, tmp)
        env.start()
        stack.enter_context(running_sites(env, notes))
        runners: dict[str, Callable[[], None]] = {
            "overhead": lambda: part_overhead(args, env, out),
            "concurrency": lambda: part_concurrency(args, env, out,
                                                    warm="overhead" in parts),
        }
        for p in PARTS:
            if p in parts:
                _bounded(p, runners[p], args.part_timeout, out)
        out.print()  # before teardown
        la = os.getloadavg()[0]
        print(f"({time.perf_counter() - t_all:.0f} s; load average {la_start:.2f} at start, "
              f"{la:.2f} now, {os.cpu_count()} cpus)")
        if la_start >= (os.cpu_count() or 1):
            notes.append("the machine was busy before the run: figures are noisy, rerun when "
                         "it is quiet")
        for note in notes:
            print(f"note: {note}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
