"""A training run over HTTP whose store stops for 8 s mid-run: it finishes, skips nothing, and logs the
losses of the run without the outage."""

from __future__ import annotations

import json
import logging
import threading
import time

import pytest

from loaders.devtools.objserver import ObjectServer
from omnimae.metrics import read_jsonl
from omnimae.train import train

OUTAGE_S = 8.0


def http_run(tiny_config, url: str, name: str):
    cfg = tiny_config(**{"data.image.root": url + "images", "data.video.root": url + "videos",
                         "data.storage.backoff_max_s": 0.5, "data.storage.outage_s": 60,
                         "train.run_name": name})
    run_dir = train(cfg)
    records = read_jsonl(run_dir / "metrics.jsonl")
    losses = [(r["step"], r.get("loss/image"), r.get("loss/video")) for r in records]
    return losses, json.loads((run_dir / "summary.json").read_text())


@pytest.mark.slow
def test_a_store_stopped_for_8_s_mid_run_changes_nothing(tiny_data, tiny_config, caplog):
    caplog.set_level(logging.WARNING, logger="loaders")
    server = ObjectServer(tiny_data).start()
    port, url = server.port, server.url
    try:
        expected, _ = http_run(tiny_config, url, "steady")
        requests_per_run = server.request_count()
    finally:
        server.stop()

    servers = [ObjectServer(tiny_data, port=port).start()]
    stopped = threading.Event()

    def outage():  # stop the store a third of the way into the run, restart it 8 s later
        while servers[0].request_count() < requests_per_run // 3:
            time.sleep(0.01)
        servers[0].stop()
        stopped.set()
        time.sleep(OUTAGE_S)
        servers.append(ObjectServer(tiny_data, port=port).start())

    thread = threading.Thread(target=outage, daemon=True)
    thread.start()
    try:
        started = time.monotonic()
        got, summary = http_run(tiny_config, url, "outage")
        elapsed = time.monotonic() - started
    finally:
        thread.join(OUTAGE_S + 5)
        for srv in servers:
            srv.stop()

    assert stopped.is_set() and elapsed > OUTAGE_S  # the run did wait for the store
    assert got == expected  # same steps, same losses: nothing skipped, nothing reordered
    assert all(s["failures"] == 0 for s in summary["loader"].values())
    reader = next(iter(summary["loader"].values()))["reader"]
    assert reader["failures"] == 0 and reader["outages"] >= 1 and reader["reads_held"] > 0
    lines = [r.getMessage() for r in caplog.records if r.name == "loaders.storage.outage"]
    assert lines and lines[0].startswith("storage outage:")
    assert any(line.startswith("storage reachable again") for line in lines)
    assert not [r for r in caplog.records if r.name == "loaders.item_stream"]  # no "skipped ... item" line
