"""The system benchmark's own logic: the message mix, signing, reply matching, the knee, the
fake Graph API's answers, and the report merge. (Figures are never asserted here.)"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import orjson
import pytest

from bench import report, system_fake
from bench.system_load import ROUTES, Matcher, Mix, Zipf, knee, signed_bodies
from services.gateway.channels import cloud_api


def test_zipf_ranks_fall_off() -> None:
    rng = random.Random(1)
    counts = Counter(Zipf(50).draw(rng) for _ in range(20_000))
    assert set(counts) <= set(range(50))
    assert counts[0] > counts[1] > counts[4] > counts[20]


def test_mix_is_seeded_and_spreads_users_over_businesses() -> None:
    a = Mix(["p1", "p2", "p3"], users=1000, seed=3).take(500)
    b = Mix(["p1", "p2", "p3"], users=1000, seed=3).take(500)
    assert [(m.user, m.text) for m in a] == [(m.user, m.text) for m in b]
    assert len({m.id for m in a}) == 500
    assert {m.phone_number_id for m in a} == {"p1", "p2", "p3"}
    assert all(m.phone_number_id == Mix(["p1", "p2", "p3"]).business_of(m.user) for m in a)
    kinds = Counter(m.kind for m in a)
    assert kinds["route"] > kinds["phrasing"] > kinds["follow_up"] > 0
    assert len(ROUTES) > 50 and all(o != d for o, d in ROUTES)


def test_bodies_are_signed_cloud_api_webhooks() -> None:
    message = Mix(["100000000000101"]).next("t")
    ((body, headers),) = signed_bodies([message], "s3cret")
    assert cloud_api.signature_matches(body, headers[cloud_api.SIGNATURE_HEADER], "s3cret")
    parsed = cloud_api.parse(json.loads(body))
    (inbound,) = parsed.messages
    assert (inbound.user_id, inbound.text, inbound.provider_message_id) == (
        message.user,
        message.text,
        message.id,
    )
    assert inbound.channel_identity == "100000000000101"


def test_matcher_pairs_each_message_with_the_first_reply_after_its_receipt() -> None:
    sent = {"a1": ("u1", 10.0), "a2": ("u1", 10.5), "b1": ("u2", 10.2), "c1": ("u3", 10.3)}
    matcher = Matcher(sent)
    matcher.feed(
        [
            ["m", "u1", "", 9.0],  # a reply to something before the run: no receipt, ignored
            ["r", "", "a1", 10.1],
            ["r", "", "b1", 10.3],
            ["m", "u1", "", 10.4],  # answers a1
            ["m", "u1", "", 10.45],  # a second reply to a1: not a1's latency
        ]
    )
    matcher.feed(
        [
            ["r", "", "a2", 10.6],
            ["m", "u2", "", 10.9],  # answers b1
            ["m", "u1", "", 11.5],  # answers a2
            ["r", "", "c1", 11.6],  # taken up, never answered
            ["r", "", "zz", 11.7],  # not ours
        ]
    )
    assert matcher.latency_s == pytest.approx({"a1": 0.4, "b1": 0.7, "a2": 1.0})
    assert matcher.receipts == {"a1", "a2", "b1", "c1"}


def test_a_reply_that_overtakes_its_receipt_counts_no_better_than_the_receipt() -> None:
    sent = {"a1": ("u1", 10.0), "a2": ("u1", 10.2), "b1": ("u2", 10.0), "b2": ("u2", 11.0)}
    matcher = Matcher(sent)
    matcher.feed(
        [
            ["r", "", "a1", 10.1],
            ["m", "u1", "", 10.3],  # answers a1
            ["m", "u1", "", 10.4],  # a1's second reply, after a2 was sent
            ["r", "", "a2", 10.5],  # a2's receipt: that reply may have been a2's
            ["m", "u1", "", 10.9],  # ... it was not: this one is a2's answer
            ["r", "", "b1", 10.1],
            ["m", "u2", "", 10.2],
            ["m", "u2", "", 11.2],  # b2's answer, ahead of its receipt
            ["r", "", "b2", 11.3],
        ]
    )
    assert matcher.settle(["a1", "a2", "b1", "b2"]) == 1  # b2
    assert matcher.latency_s == pytest.approx({"a1": 0.3, "a2": 0.7, "b1": 0.2, "b2": 0.3})


def test_knee_is_the_last_step_before_the_curve_turns_up() -> None:
    assert knee([(50, 40, True), (100, 45, True), (200, 70, True), (300, 400, True)]) == 200
    assert knee([(50, 40, True), (100, 45, False), (200, 50, True)]) == 50
    assert knee([(50, 40, False)]) is None
    assert knee([(50, 40, True), (100, 60, True)]) == 100
    assert knee([]) is None


def test_fake_graph_api_answers_and_records_in_order() -> None:
    system_fake.RECORDS.clear()
    status, body = system_fake.handle(
        "POST",
        "/100/messages",
        b'{"messaging_product":"whatsapp","status":"read","message_id":"w1"}',
    )
    assert (status, orjson.loads(body)) == (200, {"success": True})
    status, body = system_fake.handle(
        "POST", "/100/messages", b'{"messaging_product":"whatsapp","to":"155","type":"text"}'
    )
    assert status == 200 and orjson.loads(body)["messages"][0]["id"].startswith("wamid.")
    assert system_fake.handle("POST", "/100/messages", b"{nope")[0] == 400
    status, body = system_fake.handle("GET", "/_received?since=1", b"")
    assert [r[:3] for r in orjson.loads(body)] == [["m", "155", ""]]
    assert [r[:3] for r in system_fake.RECORDS] == [["r", "", "w1"], ["m", "155", ""]]
    system_fake.RECORDS.clear()


def test_report_merge_keeps_other_benches_sections(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    report.write([report.Section("A", {"x": 1}, [report.Check("a", 1.0, 2.0, "<=")])])
    report.write([report.Section("B", {"y": 2})], merge=True)
    titles = [s["title"] for s in json.loads((tmp_path / "latest.json").read_text())["sections"]]
    assert titles == ["A", "B"]
    report.write([report.Section("A", {"x": 3})], merge=True)
    sections = json.loads((tmp_path / "latest.json").read_text())["sections"]
    assert [(s["title"], s["figures"]) for s in sections] == [("B", {"y": 2}), ("A", {"x": 3})]
    assert "## B" in (tmp_path / "latest.md").read_text()
    report.write([report.Section("C", {})])  # the whole suite: a fresh report
    sections = json.loads((tmp_path / "latest.json").read_text())["sections"]
    assert [s["title"] for s in sections] == ["C"]
