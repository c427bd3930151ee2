"""A fuzz test of the engine on hostile arrays: a fixed count of seeded inputs by default (the
same inputs on every machine, however loaded), or a time budget for longer local runs.

Mutated copies of seed arrays (the ``fuzz`` package: metadata, shard indexes and chunk
payloads) are read with ``read_crops`` in a long-lived subprocess (``fuzz_worker.py``), so
that a crash is counted rather than taking pytest with it. Each input ends as a clean
exception (counted by type), a success (compared with zarr-python's read of the same store,
in a second subprocess, where zarr-python reads it), or a failure: a signal, a
``PanicException`` (or a panic the engine caught and raised as "internal error" or
"panicked"), a hang, or a success that differs from zarr-python. The test requires no
failures; ``REGRESSIONS`` in ``fuzz/regressions.py`` are inputs once found failing, each run by
``test_fuzz_regression``.

Environment:
    LSIO_FUZZ_CASES     number of inputs (default DEFAULT_CASES, unless LSIO_FUZZ_SECONDS is set)
    LSIO_FUZZ_SECONDS   a time budget of the main loop instead (none by default)
    LSIO_FUZZ_SEED      the fuzz seed (default 0); inputs are a pure function of (seed, index)
    LSIO_FUZZ_START     the first case index (default 0)
    LSIO_FUZZ_TIMEOUT   seconds a read may take before it is a hang (default 20)
    LSIO_FUZZ_REPORT    write the counts and findings to this JSON file
    LSIO_FUZZ_SAVE      save each failing input (the mutated store and a description) here
    LSIO_FUZZ_SAVE_PER_CAUSE  inputs saved per distinct cause (default 5)
    LSIO_FUZZ_MEMORY_MB address-space cap of the workers (default 8192)

``pytest -s tests/test_fuzz.py`` prints the counts table.
"""

from __future__ import annotations

import collections
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest
from fuzz.cases import Case, CaseGenerator, materialize, spec_summary
from fuzz.regressions import REGRESSIONS
from fuzz.seeds import write_seeds

WORKER = Path(__file__).with_name("fuzz_worker.py")
READY_TIMEOUT = 300.0  # importing torch on a busy machine
#: A panic the engine caught and raised as an exception: a defect all the same.
CAUGHT_PANIC = re.compile(r"panicked|internal error")
FAILURES = ("mismatch", "panic", "caught_panic", "signal", "exit", "hang")


def _env_int(name: str, default: int | None) -> int | None:
    value = os.environ.get(name)
    return default if value in (None, "") else int(value)


def _worker_env() -> dict[str, str]:
    """The workers import the same lsio_torch as this process."""
    env = dict(os.environ)
    spec = find_spec("lsio_torch")
    if spec is not None and spec.origin is not None:
        root = str(Path(spec.origin).parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env.setdefault("RUST_BACKTRACE", "0")
    env.setdefault("PYTHONFAULTHANDLER", "1")
    return env


class Worker:
    """A `fuzz_worker.py` subprocess: one request at a time, each with a timeout. A worker
    that dies or hangs is restarted for the next request."""

    def __init__(self, mode: str, log_dir: Path, timeout: float) -> None:
        self.mode = mode
        self.log_dir = log_dir
        self.timeout = timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.buffer = b""
        self.starts = 0
        self.stderr_path = log_dir / f"{mode}-worker.stderr"

    def start(self) -> None:
        self.starts += 1
        self.stderr = open(self.stderr_path, "wb")  # noqa: SIM115 (kept open by the process)
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), self.mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            env=_worker_env(),
            start_new_session=True,
        )
        self.buffer = b""
        line = self._read_line(READY_TIMEOUT)
        if line is None or not json.loads(line).get("ready"):
            err = self.stderr_path.read_text(errors="replace")[-4000:]
            self.stop()
            raise RuntimeError(f"the {self.mode} fuzz worker did not start: {err}")

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            assert self.proc.stdin is not None and self.proc.stdout is not None
            self.proc.stdin.close()
            self.proc.stdout.close()
            self.stderr.close()
            self.proc = None

    def _read_line(self, timeout: float) -> bytes | None:
        """A line of the worker's answers; None at end of file or on timeout (then
        `self.timed_out` says which)."""
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        self.timed_out = False
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                self.timed_out = True
                return None
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    return None
                self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line

    def _stderr_since(self, offset: int) -> str:
        try:
            with open(self.stderr_path, "rb") as f:
                f.seek(offset)
                return f.read(20000).decode(errors="replace")
        except OSError:
            return ""

    def request(self, req: dict[str, Any]) -> dict[str, Any]:
        """The worker's answer, or {"status": "signal"/"exit"/"hang", ...} when it died or
        did not answer in time (and is then stopped). "stderr" holds what the worker wrote
        to stderr while it worked on this request."""
        if self.proc is None:
            self.start()
        assert self.proc is not None and self.proc.stdin is not None
        offset = self.stderr_path.stat().st_size
        try:
            self.proc.stdin.write((json.dumps(req) + "\n").encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        line = self._read_line(self.timeout)
        if line is not None:
            result = json.loads(line)
        elif self.timed_out:
            self.stop()
            result = {"status": "hang", "message": f"no answer in {self.timeout:g} s"}
        else:
            code = self.proc.wait()
            if code < 0:
                name = signal.Signals(-code).name
                result = {"status": "signal", "signal": name, "message": name}
            else:
                result = {"status": "exit", "code": code, "message": f"exit code {code}"}
            self.stop()
        result["stderr"] = self._stderr_since(offset)[-8000:]
        return result


def _panic_site(stderr: str) -> str | None:
    """Where the first panic in `stderr` was raised, and its message."""
    match = re.search(r"panicked at ([^\n]+?):(\d+):\d+:\n([^\n]*)", stderr)
    return f"at {match[1]}:{match[2]}: {_normalize(match[3])}" if match else None


def _normalize(text: str) -> str:
    """A message without its numbers and paths, to tell distinct causes apart."""
    text = re.sub(r"/[^\s'\"]*", "<path>", text)
    text = re.sub(r"0x[0-9a-fA-F]+", "N", text)
    return re.sub(r"\d+", "N", text)[:200]


#: What a crashing process says on stderr before it dies.
FATAL = re.compile(
    r"memory allocation of \d+ bytes failed|fatal runtime error[^\n]*|has overflowed its stack"
    r"|Fatal Python error[^\n]*|double free[^\n]*|corrupted [^\n]*|malloc\(\)[^\n]*"
)


def _cause(category: str, result: dict[str, Any]) -> str:
    """A short description that tells a failure's cause from the others'."""
    stderr = result.get("stderr", "")
    site = _panic_site(stderr)
    if category in ("panic", "caught_panic"):
        return f"{category} {site or _normalize(result.get('message', ''))}"
    if category in ("signal", "exit"):
        fatal = FATAL.search(stderr)
        detail = site or (_normalize(fatal[0]) if fatal else "")
        return f"{category} {result.get('message')}: {detail}"
    if category == "hang":
        return f"hang {site or ''}"
    return f"{category}: {_normalize(result.get('message', ''))}"


class Campaign:
    """Runs cases, counts their outcomes, keeps and saves the failures."""

    def __init__(self, seeds, work: Path, save: Path | None, timeout: float) -> None:
        self.seeds = seeds
        self.work = work
        self.save = save
        self.save_per_cause = _env_int("LSIO_FUZZ_SAVE_PER_CAUSE", 5) or 0
        self.lsio = Worker("lsio", work, timeout)
        self.zarr = Worker("zarr", work, timeout)
        self.counts: collections.Counter[str] = collections.Counter()
        self.clean: collections.Counter[str] = collections.Counter()
        self.clean_causes: collections.Counter[str] = collections.Counter()
        self.zarr_refused: collections.Counter[str] = collections.Counter()
        self.zarr_refused_examples: dict[str, str] = {}
        self.kinds: dict[str, collections.Counter[str]] = collections.defaultdict(
            collections.Counter
        )
        self.causes: dict[str, dict[str, Any]] = {}
        self.findings: list[dict[str, Any]] = []

    def close(self) -> None:
        self.lsio.stop()
        self.zarr.stop()

    def run(self, case: Case) -> str:
        """Runs one case; returns its outcome category."""
        store = self.work / f"case-{case.index}.zarr"
        if store.exists():
            shutil.rmtree(store)
        materialize(case, self.seeds, store)
        req = {"path": str(store), "origins": case.origins, "crop": case.crop}
        result = self.lsio.request({**req, "threads": case.threads})
        status = result["status"]
        zarr_result = None
        if status == "ok":
            zarr_result = self.zarr.request(req)
            if zarr_result["status"] != "ok":
                category = "lsio_ok_zarr_refused"
                what = zarr_result.get("type") or zarr_result["status"]
                self.zarr_refused[what] += 1
                self.zarr_refused_examples.setdefault(
                    what,
                    f"{case.seed}: {spec_summary(case.spec)} -> {zarr_result.get('message')}"[:500],
                )
            elif all(result[k] == zarr_result[k] for k in ("sha256", "dtype", "shape")):
                category = "ok_equal"
            else:
                category = "mismatch"
        elif status == "error" and result["type"] == "PanicException":
            category = "panic"
        elif status == "error" and CAUGHT_PANIC.search(result["message"]):
            category = "caught_panic"
        elif status == "error":
            category = "clean_exception"
            self.clean[result["type"]] += 1
            self.clean_causes[f"{result['type']}: {_normalize(result['message'])}"] += 1
        else:
            category = status  # signal, exit, hang
        self.counts[category] += 1
        self.counts["inputs"] += 1
        self.kinds[case.spec["kind"]][category] += 1
        if category in FAILURES:
            self._found(case, store, category, result, zarr_result)
        shutil.rmtree(store, ignore_errors=True)
        return category

    def _found(self, case, store, category, result, zarr_result) -> None:
        cause = _cause(category, result)
        entry = self.causes.setdefault(
            cause, {"count": 0, "first": None, "saved": 0, "category": category}
        )
        entry["count"] += 1
        finding = {
            "category": category,
            "cause": cause,
            "case": case.to_json(),
            "summary": f"{case.seed}: {spec_summary(case.spec)}",
            "lsio": {k: v for k, v in result.items() if k != "stderr"},
            "stderr": result.get("stderr", "")[-3000:],
            "zarr": zarr_result and {k: v for k, v in zarr_result.items() if k != "stderr"},
        }
        if entry["first"] is None:
            entry["first"] = finding
        if len(self.findings) < 2000:
            self.findings.append(finding)
        if self.save is not None and entry["saved"] < self.save_per_cause:
            entry["saved"] += 1
            target = self.save / f"{category}-{case.seed}-{case.index:07d}"
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(store, target / "store")
            repro = (
                "import lsio_torch; lsio_torch.read_crops("
                f"'store', {case.origins!r}, {case.crop!r}, threads={case.threads})"
            )
            finding["saved"] = str(target)
            (target / "case.json").write_text(
                json.dumps(
                    {**finding, "reproduce": f'cd {target} && python -c "{repro}"'}, indent=1
                )
            )

    def report(self, seconds: float, fuzz_seed: int) -> dict[str, Any]:
        return {
            "inputs": self.counts["inputs"],
            "seconds": round(seconds, 1),
            "fuzz_seed": fuzz_seed,
            "ok_equal": self.counts["ok_equal"],
            "lsio_ok_zarr_refused": self.counts["lsio_ok_zarr_refused"],
            "zarr_refusals": dict(self.zarr_refused.most_common()),
            "zarr_refusal_examples": self.zarr_refused_examples,
            "clean_exceptions": self.counts["clean_exception"],
            "clean_by_type": dict(self.clean.most_common()),
            "clean_messages": dict(self.clean_causes.most_common(100)),
            "mismatches": self.counts["mismatch"],
            "panics": self.counts["panic"],
            "caught_panics": self.counts["caught_panic"],
            "signals": self.counts["signal"],
            "exits": self.counts["exit"],
            "hangs": self.counts["hang"],
            "worker_starts": {"lsio": self.lsio.starts, "zarr": self.zarr.starts},
            "by_kind": {k: dict(v) for k, v in sorted(self.kinds.items())},
            "causes": {
                cause: {
                    "category": e["category"],
                    "count": e["count"],
                    "example": e["first"]["summary"],
                    "message": e["first"]["lsio"].get("message", "")[:300],
                    "saved": e["first"].get("saved"),
                }
                for cause, e in sorted(self.causes.items(), key=lambda kv: -kv[1]["count"])
            },
            "findings": self.findings,
        }


def _print_table(report: dict[str, Any]) -> None:
    rows = [
        ("inputs", report["inputs"]),
        ("successes equal to zarr-python", report["ok_equal"]),
        ("successes zarr-python refused", report["lsio_ok_zarr_refused"]),
        ("clean exceptions", report["clean_exceptions"]),
        *[(f"  {name}", n) for name, n in report["clean_by_type"].items()],
        ("mismatches", report["mismatches"]),
        ("panics (PanicException)", report["panics"]),
        ("panics raised as exceptions", report["caught_panics"]),
        ("signals", report["signals"]),
        ("other exits", report["exits"]),
        ("hangs", report["hangs"]),
    ]
    print(f"\nlsio_torch fuzz: {report['inputs']} inputs in {report['seconds']} s")
    for name, n in rows:
        print(f"  {name:<40} {n:>8}")
    if report["zarr_refusals"]:
        print("  zarr-python refusals of lsio successes:", report["zarr_refusals"])
    for cause, e in report["causes"].items():
        print(f"  [{e['category']} x{e['count']}] {cause}\n      e.g. {e['example']}")


#: Inputs of a default run: the same ones on every machine (about 45 s on 2 cores).
DEFAULT_CASES = 6000


def _failures(report: dict[str, Any]) -> int:
    keys = ("mismatches", "panics", "caught_panics", "signals", "exits", "hangs")
    return sum(report[k] for k in keys)


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory):
    return write_seeds(tmp_path_factory.mktemp("fuzz-seeds"))


def test_fuzz(seeds, tmp_path: Path) -> None:
    seconds = _env_int("LSIO_FUZZ_SECONDS", None)
    cases = _env_int("LSIO_FUZZ_CASES", None if seconds else DEFAULT_CASES)
    fuzz_seed = _env_int("LSIO_FUZZ_SEED", 0) or 0
    start = _env_int("LSIO_FUZZ_START", 0) or 0
    save = os.environ.get("LSIO_FUZZ_SAVE")
    save_dir = Path(save) if save else None
    if save_dir is not None:
        save_dir.mkdir(parents=True, exist_ok=True)
    campaign = Campaign(seeds, tmp_path, save_dir, float(_env_int("LSIO_FUZZ_TIMEOUT", 20) or 20))
    generator = CaseGenerator(seeds, fuzz_seed)
    campaign.lsio.start()  # the workers' imports do not count against the budget
    campaign.zarr.start()
    began = time.monotonic()
    index = start
    try:
        while cases is None or index < start + cases:
            if seconds is not None and time.monotonic() - began >= seconds:
                break
            campaign.run(generator.case(index))
            index += 1
            if (index - start) % 2000 == 0:  # shown with pytest -s
                c = campaign.counts
                print(
                    f"fuzz: {index - start} inputs, {time.monotonic() - began:.0f} s, "
                    f"{c['ok_equal']} equal, {c['clean_exception']} clean, "
                    f"{_failures(campaign.report(0, fuzz_seed))} failures",
                    flush=True,
                )
    finally:
        campaign.close()
        report = campaign.report(time.monotonic() - began, fuzz_seed)
        path = os.environ.get("LSIO_FUZZ_REPORT")
        if path:
            Path(path).write_text(json.dumps(report, indent=1, default=str))
        _print_table(report)
    assert report["inputs"] == cases if seconds is None else report["inputs"] > 0
    assert _failures(report) == 0, "\n".join(
        f"{e['category']} x{e['count']}: {cause} (e.g. {e['example']}: {e['message']})"
        for cause, e in report["causes"].items()
    )


@pytest.fixture(scope="module")
def regression_campaign(seeds, tmp_path_factory: pytest.TempPathFactory):
    """One pair of workers for all the regression cases."""
    work = tmp_path_factory.mktemp("fuzz-regressions")
    campaign = Campaign(seeds, work, None, float(_env_int("LSIO_FUZZ_TIMEOUT", 20) or 20))
    yield campaign
    campaign.close()


@pytest.mark.parametrize(
    "regression", REGRESSIONS, ids=[r.get("id", str(i)) for i, r in enumerate(REGRESSIONS)]
)
def test_fuzz_regression(regression: dict[str, Any], regression_campaign: Campaign) -> None:
    """An input the fuzzer once found failing (a crash, panic, hang or wrong read): it must
    now end cleanly, as an exception that is not a panic or as a success equal to
    zarr-python's read."""
    case = Case(
        index=0,
        seed=regression["seed"],
        spec=regression["spec"],
        origins=regression["origins"],
        crop=regression["crop"],
        threads=regression.get("threads", 2),
    )
    findings = len(regression_campaign.findings)
    for _ in range(regression.get("repeat", 1)):  # a failure that shows only sometimes
        category = regression_campaign.run(case)
        if category in FAILURES:
            break
    new = regression_campaign.findings[findings:]
    detail = f"{new[0]['lsio']} {new[0]['stderr'][-2000:]}" if new else ""
    assert category not in FAILURES, f"{regression.get('note', '')}: {category}: {detail}"
