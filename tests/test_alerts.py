import json

from appliance.alerts import active_alerts, clear_alert, raise_alert
from appliance.ledger import Ledger, verify

T1, T2 = "2026-03-02T09:30:00.000Z", "2026-03-02T09:35:00.000Z"


def test_alert_raised_once_and_cleared_once(ledger: Ledger) -> None:
    assert raise_alert(ledger, "sync.backlog", "backlog older than 15 min", time=T1)
    assert not raise_alert(ledger, "sync.backlog", "backlog older than 15 min", time=T2)
    assert [a.code for a in active_alerts(ledger)] == ["sync.backlog"]
    assert clear_alert(ledger, "sync.backlog", time=T2, note="drained")
    assert not clear_alert(ledger, "sync.backlog", time=T2)
    assert active_alerts(ledger) == []
    events = ledger.outbox()
    assert [e.type for e in events] == ["tillbox.alert.raised", "tillbox.alert.cleared"]
    assert json.loads(events[0].data) == {"code": "sync.backlog", "severity": "warning",
                                          "message": "backlog older than 15 min"}  # fmt: skip
    assert verify(ledger).ok


def test_changed_alert_is_raised_again(ledger: Ledger) -> None:
    raise_alert(ledger, "printer", "paper low", time=T1, severity="info")
    assert raise_alert(ledger, "printer", "paper out", time=T2, severity="critical")
    [alert] = active_alerts(ledger)
    assert (alert.severity, alert.message, alert.raised_at) == ("critical", "paper out", T2)
