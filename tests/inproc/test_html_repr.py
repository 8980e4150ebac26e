"""Readable repr and Jupyter _repr_html_ of Client, LocalCluster and Future."""

from __future__ import annotations

import asyncio
import html
import re
from collections.abc import Iterator
from html.parser import HTMLParser

import pytest
from dask.utils import format_bytes

from conveyor import Client, LocalCluster
from conveyor.testing.cluster import in_process_cluster


def inc(x: int) -> int:
    return x + 1


class _Text(HTMLParser):
    """The text of an HTML fragment, its links, and whether its tags balance."""

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.links: list[str] = []
        self.stack: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack.append(tag)
        self.links += [v or "" for k, v in attrs if k == "href"]

    def handle_endtag(self, tag: str) -> None:
        assert self.stack.pop() == tag

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(fragment: str) -> _Text:
    p = _Text()
    p.feed(fragment)
    p.close()
    assert p.stack == []  # every tag closed, in order
    return p


def _fields(fragment: str) -> dict[str, str]:
    """The ``label: value`` rows of a summary table."""
    rows = re.findall(r"<tr><td[^>]*><b>(.*?)</b></td><td[^>]*>(.*?)</td></tr>", fragment)
    return {html.unescape(k): v for k, v in rows}


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(
        n_workers=2,
        threads_per_worker=2,
        processes=False,
        memory_limit="1 GiB",
        dashboard_address="127.0.0.1:0",
    ) as c:
        yield c


@pytest.fixture
def client(cluster: LocalCluster) -> Iterator[Client]:
    with Client(cluster) as c:
        yield c


def test_local_cluster_html(cluster: LocalCluster) -> None:
    out = cluster._repr_html_()
    parsed = _parse(out)
    fields = _fields(out)
    assert fields["Scheduler"] == cluster.scheduler_address
    link = cluster.dashboard_link
    assert link is not None and link.startswith("http://127.0.0.1:")
    assert parsed.links == [link]  # the dashboard link is clickable
    assert fields["Workers"] == "2" and fields["Threads"] == "4"
    assert fields["Memory"] == format_bytes(2 * 2**30) and fields["Status"] == "running"
    text = "".join(parsed.text)
    assert cluster.scheduler is not None
    for address in cluster.scheduler.workers:
        assert address in text  # the table of its workers
    assert "workers=2, threads=4" in repr(cluster)


def test_client_html_and_repr(client: Client, cluster: LocalCluster) -> None:
    out = client._repr_html_()
    parsed = _parse(out)
    fields = _fields(out)
    assert fields["Scheduler"] == cluster.scheduler_address
    assert parsed.links == [client.dashboard_link]
    assert fields["Workers"] == "2" and fields["Threads"] == "4"
    assert fields["Memory"] == format_bytes(2 * 2**30)
    assert fields["Cluster"] == "LocalCluster"
    assert repr(client) == (
        f"<Client: {cluster.scheduler_address!r} status=running, workers=2, threads=4, "
        f"memory={format_bytes(2 * 2**30)}>"
    )


def test_client_by_address_asks_the_scheduler_for_html_only(cluster: LocalCluster) -> None:
    with Client(cluster.scheduler_address, set_as_default=False) as c:
        fields = _fields(c._repr_html_())
        assert fields["Workers"] == "2" and fields["Threads"] == "4"
        assert fields["Memory"] == format_bytes(2 * 2**30)
        # a repr never waits on the network: the address and status only
        assert repr(c) == f"<Client: {cluster.scheduler_address!r} status=running>"
    assert "status=closed" in repr(c)


def test_future_html_escapes_a_nasty_key(client: Client) -> None:
    key = "<script>alert('x')</script>&"
    fut = client.submit(inc, 1, key=key)
    assert fut.result() == 2
    out = fut._repr_html_()
    parsed = _parse(out)
    assert "<script>" not in out and html.escape(key) in out
    text = "".join(parsed.text)
    assert key in text and "finished" in text and "int" in text
    pending = client.submit(inc, 2, key="pending-<&>", pure=False)
    out = pending._repr_html_()
    assert "pending-&lt;&amp;&gt;" in out
    assert pending.result() == 3


def test_asynchronous_client_html_does_not_block() -> None:
    async def main() -> None:
        async with in_process_cluster() as (s, _workers, c):
            out = c._repr_html_()  # on the running loop: shows what it knows at once
            fields = _fields(out)
            assert fields["Scheduler"] == s.address and fields["Status"] == "running"
            assert fields["Dashboard"] == "none" and "Workers" not in fields
            assert repr(c) == f"<Client: {s.address!r} status=running>"

    asyncio.run(main())
