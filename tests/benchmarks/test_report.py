"""The report (CSV, Markdown, LaTeX) over 1,000 synthetic finished-cell records."""
import pytest

from bench.perf import synthetic_records
from bench.report import write_report


@pytest.fixture(scope="module")
def records(plan):
    return synthetic_records(plan.report_records)


def test_write_report(benchmark, records, tmp_path):
    benchmark.group = f"report over {len(records)} records"
    report = benchmark.pedantic(write_report, args=(records, tmp_path, "perf"), rounds=3, iterations=1)
    assert report.paths["csv"].stat().st_size > 0
