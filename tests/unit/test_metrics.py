"""How a tool call's end is classified and counted, without an engine."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent_sandbox.admission import Busy
from agent_sandbox.config import EngineSettings, Settings
from agent_sandbox.engine.docker import EngineError, EngineUnavailable, ImageMissing
from agent_sandbox.models import InstallReport, Violation, ViolationKind
from agent_sandbox.sandbox import RequestError, Sandbox
from agent_sandbox.server.metrics import Metrics, RunOutcome, outcome_of, outcome_of_error
from agent_sandbox.server.start_rate import RateLimited
from tests.unit.test_results import result

TIMEOUT = Violation(kind=ViolationKind.TIMEOUT, limit="1 s", message="stopped after 1 s")
FAILED_INSTALL = InstallReport(
    requirements=["nope"], wheels=[], from_cache=False, resolve_s=0, install_s=0, ok=False, output="failed"
)
MEMORY = Violation(kind=ViolationKind.MEMORY, limit="128 MiB", message="killed at 128 MiB")


@pytest.mark.parametrize(
    ("fields", "outcome"),
    [
        ({"exit_code": 0}, RunOutcome.OK),
        ({"exit_code": 1}, RunOutcome.PROGRAM_ERROR),
        ({"exit_code": None, "install": FAILED_INSTALL}, RunOutcome.PROGRAM_ERROR),  # never started
        ({"exit_code": None}, RunOutcome.INFRASTRUCTURE_ERROR),  # the engine could not say how it ended
        ({"exit_code": 137, "violations": [TIMEOUT]}, RunOutcome.LIMIT),
        ({"exit_code": 0, "violations": [MEMORY]}, RunOutcome.LIMIT),  # a child was killed, not main
    ],
)
def test_a_finished_run_is_ok_a_program_error_or_a_limit(
    fields: dict[str, object], outcome: RunOutcome
) -> None:
    assert outcome_of(result(**fields)) == outcome


@pytest.mark.parametrize(
    ("exc", "outcome"),
    [
        (RequestError("entrypoint is not one of the files"), RunOutcome.REFUSED),
        (RateLimited("this client started 120 runs in the last minute"), RunOutcome.REFUSED),
        (Busy("the sandbox is busy"), RunOutcome.BUSY),
        (Busy("this client is busy"), RunOutcome.BUSY),
        (EngineUnavailable("no Docker engine answers"), RunOutcome.INFRASTRUCTURE_ERROR),
        (ImageMissing("the sandbox image is not on the Docker engine"), RunOutcome.INFRASTRUCTURE_ERROR),
        (
            EngineError("the Docker engine refused to run the sandbox container"),
            RunOutcome.INFRASTRUCTURE_ERROR,
        ),
        (RuntimeError("a bug"), RunOutcome.INFRASTRUCTURE_ERROR),
    ],
)
def test_a_call_without_a_result_is_classified_by_its_exception(exc: Exception, outcome: RunOutcome) -> None:
    assert outcome_of_error(exc) == outcome


def test_a_cancelled_call_is_cancelled() -> None:
    assert outcome_of_error(asyncio.CancelledError()) == RunOutcome.CANCELLED


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, content_type = metrics.exposition("")
    assert content_type.startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def test_results_and_errors_are_counted_and_gauges_read_the_configuration() -> None:
    metrics = Metrics(Sandbox(Settings(engine=EngineSettings(pool_size=3, max_concurrent_runs=5))))
    metrics.record_result("run_python", result(exit_code=0, peak_memory_mib=40.5), 0.03)
    metrics.record_result("run_python", result(exit_code=137, violations=[TIMEOUT, MEMORY]), 1.5)
    metrics.record_result("run_project", result(exit_code=2), 0.3)
    metrics.record_error("run_project", RequestError("no"))
    found = samples(metrics)

    def runs(tool: str, outcome: str) -> float:
        return found[("agent_sandbox_runs_total", (("outcome", outcome), ("tool", tool)))]

    assert runs("run_python", "ok") == runs("run_python", "limit") == 1
    assert runs("run_project", "program_error") == runs("run_project", "refused") == 1
    violations = {
        labels[0][1]: value for (name, labels), value in found.items() if name.endswith("violations_total")
    }
    assert violations == {kind.value: 0 for kind in ViolationKind} | {"timeout": 1, "memory": 1}
    assert found[("agent_sandbox_run_duration_seconds_count", (("tool", "run_python"),))] == 2
    assert found[("agent_sandbox_run_duration_seconds_sum", (("tool", "run_python"),))] == pytest.approx(1.53)
    assert found[("agent_sandbox_run_duration_seconds_bucket", (("le", "0.05"), ("tool", "run_python")))] == 1
    # The refusal ran nothing: it is not in the histogram.
    assert found[("agent_sandbox_run_duration_seconds_count", (("tool", "run_project"),))] == 1
    # Only the run that reported its peak memory is in its histogram.
    assert found[("agent_sandbox_run_peak_memory_mib_count", (("tool", "run_python"),))] == 1
    assert found[("agent_sandbox_run_peak_memory_mib_bucket", (("le", "32.0"), ("tool", "run_python")))] == 0
    assert found[("agent_sandbox_run_peak_memory_mib_bucket", (("le", "64.0"), ("tool", "run_python")))] == 1
    assert found[("agent_sandbox_runs_in_progress", ())] == found[("agent_sandbox_runs_queued", ())] == 0
    assert found[("agent_sandbox_run_slots", ())] == 5
    assert found[("agent_sandbox_warm_pool_size", ())] == 3
    assert found[("agent_sandbox_warm_pool_ready", ())] == 0  # no pool until the sandbox is entered


def test_each_metrics_has_a_registry_of_its_own() -> None:
    first, second = Metrics(Sandbox(Settings())), Metrics(Sandbox(Settings()))
    first.record_error("run_python", RequestError("no"))
    refused = ("agent_sandbox_runs_total", (("outcome", "refused"), ("tool", "run_python")))
    assert refused in samples(first)
    assert refused not in samples(second)
