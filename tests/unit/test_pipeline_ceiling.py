"""The pieces behind the pipeline's ceiling, without services: the instant backend, the
batch's result records (the same record Celery's own write makes), the acks a worker's event
loop writes together, and the bench's goals. Through a real worker:
tests/integration/test_instant.py."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from celery import Celery
from celery.app.task import Context

from jobfit.shared.config import ModelSettings
from jobfit.shared.redis_transport import QoS, Transport, sweep_interval_s
from jobfit.tasks.results import Outcome, batchable, result_meta
from jobfit.workers.embedders.base import ModelSpec
from jobfit.workers.embedders.instant import DEFAULT_DIM, InstantEmbedder, model_dim
from jobfit.workers.embedders.select import make_embedder
from tools.bench import goals, int8_goals


def fake_model(tmp_path: Path, config: dict[str, Any] | None) -> Path:
    path = tmp_path / "tiny-model"
    path.mkdir()
    (path / "modules.json").write_text("[]", encoding="utf-8")
    (path / "model.safetensors").write_bytes(b"weights")
    if config is not None:
        (path / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return path


def test_instant_backend_is_one_unit_vector_as_wide_as_the_model(tmp_path: Path) -> None:
    spec = ModelSpec(
        path=fake_model(tmp_path, {"hidden_size": 768}), name="tiny", backend="instant"
    )
    embedder = make_embedder(spec, tmp_path / "store")
    assert isinstance(embedder, InstantEmbedder)
    assert embedder.backend == "instant"
    assert embedder.version.startswith("tiny-model@") and embedder.version.endswith("+instant")
    out = embedder.encode(["a", "b", "c"])
    assert out.shape == (3, 768) and out.dtype == np.float32
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0)
    assert (out == out[0]).all()
    assert embedder.encode([]).shape == (0, 768)


def test_instant_width_without_a_config_and_the_setting(tmp_path: Path) -> None:
    spec = ModelSpec(path=fake_model(tmp_path, None), name="tiny", backend="instant")
    assert model_dim(spec) == DEFAULT_DIM
    assert ModelSettings(backend="instant").backend == "instant"


def request(**extra: Any) -> Context:
    return Context(
        {
            "id": "t-1",
            "task": "jobfit.ingest_resume",
            "args": [],
            "kwargs": {"document": {"id": "R1"}, "score": False},
            "hostname": "embed1@host",
            "retries": 0,
            "delivery_info": {"routing_key": "embed", "exchange": ""},
            **extra,
        }
    )


@pytest.mark.parametrize("extra", [{}, {"group": "g-1", "parent_id": "p-1"}])
def test_a_batch_result_is_the_record_celery_stores(extra: dict[str, Any]) -> None:
    """The same record as Celery's own ``mark_as_done`` (extended results, as jobfit runs)."""
    app = Celery("t", backend="redis://127.0.0.1:6379/0", set_as_current=False)
    app.conf.result_extended = True
    req = request(**extra)
    ours = result_meta(app, req, {"status": "created"}, "2026-01-01T00:00:00+00:00")
    celery = app.backend._get_result_meta({"status": "created"}, "SUCCESS", None, req)
    celery["task_id"] = "t-1"
    assert {k: v for k, v in ours.items() if k != "date_done"} == {
        k: v for k, v in celery.items() if k != "date_done"
    }
    app.conf.result_extended = False
    assert "name" not in result_meta(app, req, None, "x")


def test_failures_chords_and_other_backends_go_through_celery() -> None:
    app = Celery("t", backend="redis://127.0.0.1:6379/0", set_as_current=False)
    assert batchable(app.backend, Outcome(request(), {"ok": 1}))
    assert not batchable(app.backend, Outcome(request(), error=ValueError("bad")))
    assert not batchable(app.backend, Outcome(request(chord={"task": "x"}), {"ok": 1}))
    other = Celery("t", backend="cache+memory://", set_as_current=False)
    assert not batchable(other.backend, Outcome(request(), {"ok": 1}))


class FakePipe:
    def __init__(self, log: list[Any]) -> None:
        self.log = log

    def zrem(self, key: str, tag: str) -> FakePipe:
        self.log.append(("zrem", key, tag))
        return self

    def hdel(self, key: str, tag: str) -> FakePipe:
        self.log.append(("hdel", key, tag))
        return self

    def execute(self) -> None:
        self.log.append("execute")

    def hget(self, key: str, tag: str) -> None:
        return None  # acknowledged: no longer in the unacked hash

    def multi(self) -> None:
        pass


class FakeClient:
    def __init__(self, log: list[Any]) -> None:
        self.log = log

    def pipeline(self) -> FakePipe:
        return FakePipe(self.log)

    def transaction(self, fn: Any, key: str) -> None:
        self.log.append("restore")
        fn(FakePipe(self.log))

    def zadd(self, key: str, mapping: dict[str, float], xx: bool = False) -> None:
        self.log.append(("zadd", key, mapping, xx))


class FakeLoop:
    def __init__(self) -> None:
        self.soon: list[Any] = []

    def call_soon(self, fn: Any) -> None:
        self.soon.append(fn)


class FakeChannel:
    unacked_key, unacked_index_key, do_restore = "unacked", "unacked_index", False

    def __init__(self, loop: FakeLoop | None) -> None:
        self.log: list[Any] = []
        self.connection = type("Transport", (), {"event_loop": loop})()

    @contextmanager
    def conn_or_acquire(self, client: Any = None):  # type: ignore[no-untyped-def]
        yield FakeClient(self.log)


def test_acks_of_one_loop_turn_are_written_in_one_pipeline() -> None:
    loop = FakeLoop()
    channel = FakeChannel(loop)
    qos = QoS(channel)
    for tag in ("a", "b", "c"):
        qos._delivered[tag] = object()
        qos.ack(tag)
    assert channel.log == [], "nothing written during the turn"
    assert len(loop.soon) == 1, "one flush for the turn"
    loop.soon.pop()()
    assert channel.log.count("execute") == 1
    assert [e[2] for e in channel.log if e[0] == "hdel"] == ["a", "b", "c"]
    assert qos._dirty == {"a", "b", "c"}, "kombu's own bookkeeping: acknowledged"
    qos.ack("d")  # the next turn: a flush of its own
    assert len(loop.soon) == 1


def test_without_an_event_loop_each_ack_is_written_at_once() -> None:
    channel = FakeChannel(None)
    qos = QoS(channel)
    qos.ack("a")
    assert channel.log == [("zrem", "unacked_index", "a"), ("hdel", "unacked", "a"), "execute"]


def test_queued_acks_are_written_before_unacknowledged_messages_are_put_back() -> None:
    loop = FakeLoop()
    channel = FakeChannel(loop)
    qos = QoS(channel)
    qos._delivered["a"] = object()
    qos.ack("a")
    qos.restore_unacked()  # a closing channel (warm shutdown)
    assert channel.log[:3] == [("zrem", "unacked_index", "a"), ("hdel", "unacked", "a"), "execute"]
    assert "restore" in channel.log[3:], "then kombu's restore finds it acknowledged"


def test_a_lease_renewal_rescores_every_held_message_and_adds_none_back() -> None:
    channel = FakeChannel(FakeLoop())
    qos = QoS(channel)
    assert qos.renew_leases() == 0 and channel.log == [], "nothing held: nothing written"
    for tag in ("a", "b"):
        qos._delivered[tag] = object()
    before = time.time()
    assert qos.renew_leases() == 2
    [(command, key, scores, xx)] = channel.log
    assert (command, key, sorted(scores), xx) == ("zadd", "unacked_index", ["a", "b"], True)
    assert len(set(scores.values())) == 1 and min(scores.values()) >= before


@pytest.mark.parametrize("timeout_s,interval_s", [(60, 10.0), (30, 5.0), (10, 10 / 6), (2, 1.0)])
def test_leases_are_renewed_and_swept_every_sixth_of_the_timeout(timeout_s, interval_s) -> None:
    assert sweep_interval_s(timeout_s) == pytest.approx(interval_s)


def test_a_transport_renews_each_channel_and_stops_once_it_has_none() -> None:
    renewed: list[str] = []

    def channel(name: str) -> Any:
        return SimpleNamespace(qos=SimpleNamespace(renew_leases=lambda: renewed.append(name)))

    transport = Transport.__new__(Transport)  # no connection: its timer's callback only
    transport.lease_timer = SimpleNamespace(cancelled=False)
    transport.lease_timer.cancel = lambda: setattr(transport.lease_timer, "cancelled", True)
    transport.channels = [channel("a"), channel("b")]
    transport.renew_leases()
    assert renewed == ["a", "b"] and not transport.lease_timer.cancelled
    transport.channels = []  # the connection was closed (Celery reconnected with a new one)
    transport.renew_leases()
    assert transport.lease_timer.cancelled


def test_goals_read_the_ceiling_and_the_default_backend() -> None:
    models = {
        "minilm": {
            "pipeline_ceiling": {"documents_per_s": 800.0, "bulk_documents_per_s": 1200.0},
            "e2e_ingest_default_backend": {"throughput_vs_st_encode": 1.4},
            "e2e_ingest_default_backend_bulk": {"throughput_vs_st_encode": 1.45},
        }
    }
    out = goals(models)
    # Each goal reads the faster way to send the documents, and shows both.
    assert out["1_pipeline_ceiling_minilm"]["met"] is True
    assert out["1_pipeline_ceiling_minilm"]["one_document_per_message"] == 800.0
    assert out["2_default_backend_e2e_vs_st_encode_minilm"]["met"] is False
    assert out["2_default_backend_e2e_vs_st_encode_minilm"]["ratio"] == 1.45


def test_the_int8_goal_reads_the_scheme_that_serves_and_every_one_tried() -> None:
    def tried(scheme: str, passes: bool, speedup: float) -> dict[str, Any]:
        figures = {"speedup_vs_torch": speedup, "spearman_drop": 0.0, "cosine_to_torch_mean": 0.99}
        return {"quantization": {"scheme": scheme}, "passes": passes, **figures}

    def verdict(*ladder: dict[str, Any]) -> dict[str, Any]:
        last = ladder[-1]
        return {
            "gate": {"int8_passes": last["passes"]},
            "onnx-int8": {"speedup_vs_torch": last["speedup_vs_torch"]},
            "quantization": last["quantization"],
            "tried": list(ladder),
        }

    out = int8_goals(
        {
            "mpnet": verdict(tried("all", False, 3.5), tried("ffn-down-fp32", True, 2.1)),
            "slow": verdict(tried("all", True, 1.8)),
            "refused": verdict(tried("all", False, 3.0), tried("ffn-down-fp32", False, 2.2)),
            # None could be made: the verdict has no int8 figures, its tries say why.
            "unmade": {
                "gate": {"int8_passes": False, "error": "no int8 graph could be made"},
                "quantization": {"scheme": "ffn-down-fp32"},
                "tried": [{"quantization": {"scheme": "all"}, "passes": False, "error": "boom"}],
            },
        }
    )
    unmade = out["3_int8_served_vs_torch_unmade"]
    assert unmade["met"] is False and unmade["tried"]["all"] == {"passes": False, "error": "boom"}
    assert out["3_int8_served_vs_torch_mpnet"]["served"] == "ffn-down-fp32"
    assert out["3_int8_served_vs_torch_mpnet"]["met"] is True
    assert out["3_int8_served_vs_torch_mpnet"]["tried"]["all"]["speedup_vs_torch"] == 3.5
    assert out["3_int8_served_vs_torch_slow"]["met"] is False  # serves, but below 2x
    refused = out["3_int8_served_vs_torch_refused"]
    assert refused["met"] is False and refused["served"] is None
    assert refused["speedup_vs_torch"] is None
