"""BENCHMARKS.md shows what benchmarks/run_all.py selects of each result file: rows, columns and sections it
leaves out stay in the file, which the section then links; footers are short; a twin (a GPU run) shows its tables
under its main section. Text only: milliseconds."""
from __future__ import annotations

import pytest

from benchmarks import run_all

RESULT = """# Speed of things

What is measured, in one paragraph.

| variant | ms | samples (s) |
|---|---|---|
| gap | 10 | 9, 10, 11 |
| big_1k | 20 | 19, 20 |
| big_60k | 30 | 29, 30 |

## Per epoch

| epoch | ms |
|---|---|
| 1 | 12 |

_2026-11-23T04:34:14+00:00 · `python -m benchmarks.speed --name speed` · Linux-6.18-x86_64-with-glibc2.36, 2 CPUs, torch 2.14.1, device cpu_
"""


@pytest.fixture
def results(tmp_path, monkeypatch):
    monkeypatch.setattr(run_all, "RESULTS", tmp_path)
    monkeypatch.setattr(run_all, "STEPS", [("speed", ["-m", "benchmarks.speed"])])
    monkeypatch.setattr(run_all, "GPU_STEPS", [("speed_cuda", ["-m", "benchmarks.speed", "--device", "cuda"])])
    for name in ("DETAIL_LINES", "DETAIL_COLUMNS", "DETAIL_SECTIONS", "TITLES", "ONLY_SECTION", "TWINS"):
        monkeypatch.setattr(run_all, name, {})
    monkeypatch.setattr(run_all, "PLOTTED", set())
    (tmp_path / "speed.md").write_text(RESULT)
    return tmp_path


def test_left_out_rows_columns_and_sections_are_named_with_a_link_to_the_file(results, monkeypatch):
    monkeypatch.setattr(run_all, "DETAIL_LINES", {"speed": r"^\| big_60k \|"})
    monkeypatch.setattr(run_all, "DETAIL_COLUMNS", {"speed": ["samples (s)"]})
    monkeypatch.setattr(run_all, "DETAIL_SECTIONS", {"speed": ["Per epoch"]})
    page = run_all._section("speed")
    shown, _, note = page.partition("Also in")
    assert page.startswith("## Speed of things\n")
    assert "| gap | 10 |\n" in shown and "| big_1k | 20 |\n" in shown and "big_60k" not in shown
    assert "samples" not in shown and "| variant | ms |\n|---|---|\n" in shown
    assert "Per epoch" not in shown and "| 1 | 12 |" not in shown
    assert ("Also in [`benchmarks/results/speed.md`](benchmarks/results/speed.md): “Per epoch”; 1 more rows; "
            "columns samples (s).") in page
    # the footer: date and machine; the command because it differs from the one `make bench` runs
    assert "_2026-11-23 · `python -m benchmarks.speed --name speed` · 2-core CPU_" in page
    assert "Linux-6.18" not in page and (results / "speed.md").read_text() == RESULT  # the file keeps everything


def test_a_result_shown_whole_has_no_link_and_a_footer_without_the_listed_command(results):
    (results / "speed.md").write_text(RESULT.replace(" --name speed", ""))
    page = run_all._section("speed")
    assert "Also in" not in page and "big_60k" in page and "samples (s)" in page
    assert page.rstrip().endswith("_2026-11-23 · 2-core CPU_")


def test_a_gpu_twin_shows_its_tables_under_its_main_section_and_links_its_file(results):
    (results / "speed_cuda.md").write_text(
        RESULT.replace("device cpu_", "device cuda, NVIDIA H100 80GB HBM3_").replace(" --name speed", " --device cuda"))
    twin = run_all._twin("speed_cuda")
    assert twin.startswith("### On a GPU (NVIDIA H100 80GB HBM3)\n")
    assert "#### Per epoch" in twin and "| big_60k | 30 | 29, 30 |" in twin
    assert "What is measured" not in twin  # the main section's prose stands for both
    assert "_2026-11-23 · NVIDIA H100 80GB HBM3_" in twin
    assert "In full: [`benchmarks/results/speed_cuda.md`](benchmarks/results/speed_cuda.md)." in twin
    assert run_all._shown_order() == [("speed", ["-m", "benchmarks.speed"]),
                                      ("speed_cuda", ["-m", "benchmarks.speed", "--device", "cuda"])]


def test_the_page_stays_within_its_size(results):
    """The assembled page of the repository (not the fixture's) is at most 40 KB: current results only."""
    assert (run_all.ROOT / "BENCHMARKS.md").stat().st_size <= 40_000
