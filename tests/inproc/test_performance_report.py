"""performance_report: one self-contained HTML file about a block of work."""

from __future__ import annotations

import asyncio
import re
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest

import conveyor
from conveyor import Client, LocalCluster, performance_report, wait
from conveyor.testing.cluster import in_process_cluster


def inc(x: int) -> int:
    return x + 1


def fail(x: int) -> int:
    raise ValueError(f"bad {x}")


class _Refs(HTMLParser):
    """Every tag and every src/href/xlink:href value of a document."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.refs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.refs += [v or "" for k, v in attrs if k in ("src", "href", "xlink:href", "action")]


def _parse(path: Path) -> tuple[ET.Element, _Refs]:
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    root = ET.fromstring(text.removeprefix("<!DOCTYPE html>"))  # well-formed throughout
    refs = _Refs()
    refs.feed(text)
    # self-contained: nothing fetched from anywhere, no script at all
    assert refs.refs == [] and "script" not in refs.tags and "link" not in refs.tags
    assert not re.search(r"https?://", text) and "url(" not in text
    return root, refs


def _prefix_rows(root: ET.Element) -> dict[str, list[str]]:
    tables = root.findall(".//table")
    rows = {}
    for table in tables:
        head = [th.text for th in table.findall("./tr/th")]
        if head[:2] == ["Prefix", "Runs"]:
            for tr in table.findall("./tr")[1:]:
                cells = ["".join(td.itertext()) for td in tr.findall("td")]
                rows[cells[0]] = cells[1:]
    return rows


@pytest.fixture
def client() -> Iterator[Client]:
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=2, processes=False, dashboard_address=None
        ) as cluster,
        Client(cluster) as c,
    ):
        yield c


def test_report_of_a_real_computation(client: Client, tmp_path: Path) -> None:
    client.gather(client.map(inc, range(100, 105)))  # before the block: not reported
    path = tmp_path / "report.html"
    with performance_report(filename=path) as report:
        fs = client.map(inc, range(30))
        bad = client.submit(fail, 1)
        wait([*fs, bad])
        assert client.gather(fs) == list(range(1, 31))
    assert bad.status == "error"
    root, _ = _parse(path)
    rows = _prefix_rows(root)
    assert rows["inc"][0] == "30"  # runs
    assert rows["fail"][0] == "1" and rows["fail"][3] == "1"  # one run, and it raised
    # the timeline: one bar per run, rows labelled by worker address and slot
    svg = root.find(".//svg")
    assert svg is not None
    assert len(svg.findall("rect")) == 31
    labels = {t.text for t in svg.findall("text")}
    workers = client.scheduler_info()["workers"]
    for address in workers:
        assert f"{address} #0" in labels
        assert address in path.read_text()
    assert f"conveyor {conveyor.__version__}" in "".join(root.itertext())
    assert report.dropped == 0 and len(report.records) == 31
    assert [r["status"] for r in report.records].count("error") == 1
    assert "Duration" in "".join(root.itertext())


def test_report_says_what_it_misses(client: Client, tmp_path: Path) -> None:
    cluster = client.cluster
    state = cluster.scheduler.state
    state.task_stream = deque(state.task_stream, maxlen=4)
    path = tmp_path / "short.html"
    with performance_report(filename=str(path)) as report:
        client.gather(client.map(inc, range(10)))
    assert report.dropped == 6 and len(report.records) == 4
    root, _ = _parse(path)
    assert "6 runs of this block are missing" in "".join(root.itertext())


def test_report_async_and_empty(tmp_path: Path) -> None:
    async def main() -> None:
        async with in_process_cluster() as (_s, _workers, c):
            async with performance_report(filename=tmp_path / "empty.html", client=c):
                pass
            root, _ = _parse(tmp_path / "empty.html")
            assert "No task ran" in "".join(root.itertext())
            async with performance_report(filename=tmp_path / "a.html", client=c):
                await c.gather(c.map(inc, range(8)))
            root, _ = _parse(tmp_path / "a.html")
            assert _prefix_rows(root)["inc"][0] == "8"
            with (
                pytest.raises(RuntimeError, match="async with"),
                performance_report(filename=tmp_path / "x.html", client=c),
            ):
                pass

    asyncio.run(main())
