"""The store topology templates of image/mosquitto, rendered for a test store and run for real.

A store Mosquitto (TLS, client certificates, per-device ACLs) bridged over TLS to a
central Mosquitto where the hub runs: a till syncs end to end through the bridge, and
the ACLs keep each till to its own device topic.
"""

from __future__ import annotations

import dataclasses
import shutil
import string
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from appliance.config import parse_config
from appliance.demo import seed
from appliance.till import Till, open_ledger, scripted_sale
from sync.hub import Hub
from sync.inbound import doc_version
from sync.link import LinkSettings
from sync.service import SyncOptions, SyncService, settings_from_config
from sync.testing import Collector, Mosquitto, Pki, free_port, local_preamble, make_pki, wait_until
from tests.conftest import open_shift

TEMPLATES = Path(__file__).resolve().parent.parent / "image" / "mosquitto"
FAST = SyncOptions(window=50, ack_timeout=5.0, health_interval=0.05, poll_interval=0.005, reconcile_interval=None)
ITEMS = [{"sku": "1001", "name": "Sparkling Water 1.5l", "price": 79, "barcodes": ["4006381333931"],
          "tax_class": "reduced"}]  # fmt: skip


def _render(name: str, **values: object) -> str:
    return string.Template((TEMPLATES / name).read_text(encoding="utf-8")).substitute(
        {f"TILLBOX_{k.upper()}": str(v) for k, v in values.items()}
    )


@dataclasses.dataclass
class Topology:
    pki: Pki
    store: Mosquitto
    central: Mosquitto
    enroll_port: int
    hub: Hub

    @property
    def store_url(self) -> str:
        return f"mqtts://127.0.0.1:{self.store.port}"


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[Topology]:
    pki = make_pki(tmp_path / "tls", now=datetime.now(UTC))
    tls = pki.directory
    shutil.copy(pki.server_cert, tls / "broker.pem")
    shutil.copy(pki.server_key, tls / "broker.key")
    shutil.copy(pki.ca_file, tls / "central-ca.pem")  # one CA for both brokers in this test
    pki.client("bridge/demo", file_stem="bridge")
    acl_dir = tmp_path / "acl"
    acl_dir.mkdir()
    (acl_dir / "tillbox-store.acl").write_text(_render("store.acl.in", store="demo"))
    (acl_dir / "tillbox-enroll.acl").write_text(_render("enroll.acl.in", store="demo"))
    (acl_dir / "central.acl").write_text("user tillbox-hub\ntopic readwrite tillbox/#\n\n"
                                         + _render("central.acl.in", store="demo"))  # fmt: skip
    enroll_port = free_port()
    hub_cert, hub_key = pki.client("tillbox-hub")
    with Mosquitto(tmp_path / "central", tls=pki.broker_tls(), acl_file=acl_dir / "central.acl") as central:

        def store_config(port: int) -> str:
            return local_preamble() + _render("store.conf.in", store="demo", mqtt_port=port, enroll_port=enroll_port,
                                       tls_dir=tls, acl_dir=acl_dir, central=f"127.0.0.1:{central.port}")  # fmt: skip

        with Mosquitto(tmp_path / "store", config=store_config) as store:
            link = LinkSettings.from_urls([central.url], "hub", backoff_initial=0.05, tls_ca_file=str(pki.ca_file),
                                          tls_cert_file=str(hub_cert), tls_key_file=str(hub_key))  # fmt: skip
            bridge = Collector(central.url, ["tillbox/bridge/demo/state"], ca_file=pki.ca_file,
                               cert=(hub_cert, hub_key))  # fmt: skip
            try:
                assert [p for _, p in bridge.wait(1)] == [b"1"]  # the bridge's retained "connected" notification
            finally:
                bridge.close()
            with Hub(tmp_path / "hub", link) as hub:
                assert wait_until(lambda: hub.link.connected)
                yield Topology(pki, store, central, enroll_port, hub)


class Probe:
    """A bare MQTT 5 client on the store broker with a till's certificate (or none), recording PUBACKs."""

    def __init__(
        self, topo: Topology, common_name: str | None, *, port: int | None = None, refused: bool = False
    ) -> None:
        self.acks: dict[int, str] = {}
        self.messages: list[str] = []
        self._cond = threading.Condition()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"probe-{common_name or 'anonymous'}",
                                  protocol=MQTTProtocolVersion.MQTTv5)  # fmt: skip
        files = [str(f) for f in topo.pki.client(common_name)] if common_name else [None, None]
        self.client.tls_set(ca_certs=str(topo.pki.ca_file), certfile=files[0], keyfile=files[1])
        connected, lost = threading.Event(), threading.Event()
        self.client.on_connect = lambda *a: connected.set()
        self.client.on_disconnect = lambda *a: lost.set()
        self.client.on_connect_fail = lambda *a: lost.set()
        self.client.on_publish = self._on_publish
        self.client.on_message = lambda c, u, m: self._note(m.topic)
        self.client.connect("127.0.0.1", port or topo.store.port)
        self.client.loop_start()
        if refused:
            assert lost.wait(5) and not connected.is_set()
        else:
            assert connected.wait(5)

    def _on_publish(self, client: object, userdata: object, mid: int, rc: object, props: object) -> None:
        with self._cond:
            self.acks[mid] = str(rc)
            self._cond.notify_all()

    def _note(self, topic: str) -> None:
        with self._cond:
            self.messages.append(topic)

    def publish(self, topic: str) -> str:
        """Publish with QoS 1; the PUBACK's reason ("Success", "Not authorized")."""
        info = self.client.publish(topic, b"{}", qos=1)
        with self._cond:
            assert self._cond.wait_for(lambda: info.mid in self.acks, 5)
            return self.acks[info.mid]

    def subscribe(self, topic: str) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda *a: done.set()
        self.client.subscribe(topic, 1)
        assert done.wait(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_a_till_syncs_through_the_store_broker_and_the_bridge(tmp_path: Path, topology: Topology) -> None:
    config = parse_config('[store]\ndevice_id = "till-1"\n', environ={})
    data = tmp_path / "till-1"
    with open_ledger(config, data) as ledger:
        till = Till(config, ledger, fast_hash=True)
        seed(till, data)
        open_shift(till)
        cert, key = topology.pki.client("demo/till-1")
        link = dataclasses.replace(settings_from_config(config, data, (topology.store_url,)), backoff_initial=0.05,
                                   tls_ca_file=str(topology.pki.ca_file), tls_cert_file=str(cert),
                                   tls_key_file=str(key))  # fmt: skip
        with SyncService.from_config(config, data, link=link, options=FAST) as svc:
            assert wait_until(lambda: svc.link.connected)
            scripted_sale(till, ["4006381333931"], [("cash", None)], cashier="ann")
            assert wait_until(lambda: topology.hub.sale_count("demo") == 1)  # out through the bridge
            assert wait_until(lambda: svc.relay.acked == svc.relay.last_seq() > 0)  # the hub's ack came back in
            version = topology.hub.publish_catalog("demo", ITEMS, currency="EUR")
            assert wait_until(lambda: doc_version(svc.ledger, "catalog") == version)
            assert svc.hub_online is True  # the hub's retained status crossed the bridge too


def test_a_till_may_publish_only_under_its_own_device_topic(topology: Topology) -> None:
    till_1, till_2 = Probe(topology, "demo/till-1"), Probe(topology, "demo/till-2")
    try:
        till_2.subscribe("tillbox/v1/demo/till-2/#")
        till_1.subscribe("tillbox/v1/demo/#")
        assert till_1.publish("tillbox/v1/demo/till-1/evt/sale.completed") == "Success"
        assert till_1.publish("tillbox/v1/demo/till-1/req/sale") == "Success"
        assert till_1.publish("tillbox/v1/demo/till-2/evt/sale.completed") == "Not authorized"
        assert till_1.publish("tillbox/v1/demo/till-2/status/connection") == "Not authorized"
        assert till_1.publish("tillbox/v1/demo/till-1/res/ack") == "Not authorized"  # no faking the shop's acks
        assert till_1.publish("tillbox/v1/demo/till-1/cfg/desired") == "Not authorized"
        assert till_1.publish("tillbox/v1/demo/catalog/snapshot") == "Not authorized"
        # What the shop sends till 2 reaches till 2, not till 1 (its subscription covers it, the ACL does not).
        topology.hub.command("demo", "till-2", "refresh")
        assert wait_until(lambda: "tillbox/v1/demo/till-2/cmd/refresh" in till_2.messages)
        assert till_1.messages == ["tillbox/v1/demo/till-1/evt/sale.completed", "tillbox/v1/demo/till-1/req/sale"]
    finally:
        till_1.close()
        till_2.close()


def test_the_enrollment_listener_allows_only_enrollment(topology: Topology) -> None:
    anonymous = Probe(topology, None, port=topology.enroll_port)
    try:
        assert anonymous.publish("tillbox/v1/demo/enroll/till-9") == "Success"
        assert anonymous.publish("tillbox/v1/demo/till-9/evt/sale.completed") == "Not authorized"
        assert anonymous.publish("tillbox/v1/other/enroll/till-9") == "Not authorized"
    finally:
        anonymous.close()
    Probe(topology, None, refused=True).close()  # and the till listener wants a certificate


def test_the_store_broker_lets_tills_read_and_bridges_in_every_store_document(demo_till: Till) -> None:
    """Each store-wide topic a till subscribes to is readable under the ACL and bridged in from central."""
    from sync.inbound import Inbound, InboundPolicy

    policy = InboundPolicy(currency=demo_till.currency, tax_classes=tuple(demo_till.config.tax.classes))
    inbound = Inbound(demo_till.ledger, policy, clock=demo_till.clock, on_offer=lambda doc: None)
    acl = [ln.split() for ln in (TEMPLATES / "store.acl.in").read_text().splitlines() if ln.startswith("pattern")]
    bridge = [ln.split() for ln in (TEMPLATES / "store.conf.in").read_text().splitlines() if ln.startswith("topic")]
    readable = [topic for mode, access, topic in acl if access in ("read", "readwrite")]
    bridged_in = [parts[1] for parts in bridge if parts[2] == "in"]
    store_wide = [t for t in inbound.topics() if t.split("/")[3] != demo_till.ledger.device_id]
    assert any("update/offer" in t for t in store_wide) and any("customers/revoked" in t for t in store_wide)
    for topic in store_wide:
        kind = topic.split("/")[3]
        assert f"tillbox/v1/${{TILLBOX_STORE}}/{kind}/#" in readable, topic
        assert f"tillbox/v1/${{TILLBOX_STORE}}/{kind}/#" in bridged_in, topic
