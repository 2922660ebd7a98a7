"""Writes for the monitoring app: alert rules and targets, alert evaluation, notices of box events,
notification deliveries and retention of the history. (The event timeline itself is
``fleet.core.events``.)"""

from fleet.monitoring.services.alerts import alert_rule_evaluate, alerts_evaluate
from fleet.monitoring.services.notices import event_notice_send, event_notices_sweep
from fleet.monitoring.services.notifications import (
    MAX_ATTEMPTS,
    DeliveryOutcome,
    TestNotificationResult,
    alert_rule_test_notify,
    notification_deliver,
    notification_payload,
    notification_retry_delay,
    notifications_requeue_stale,
)
from fleet.monitoring.services.retention import events_prune
from fleet.monitoring.services.rules import (
    alert_rule_create,
    alert_rule_delete,
    alert_rule_update,
    notification_target_create,
    notification_target_delete,
    notification_target_update,
)

__all__ = [
    "MAX_ATTEMPTS",
    "DeliveryOutcome",
    "TestNotificationResult",
    "alert_rule_create",
    "alert_rule_delete",
    "alert_rule_evaluate",
    "alert_rule_test_notify",
    "alert_rule_update",
    "alerts_evaluate",
    "event_notice_send",
    "event_notices_sweep",
    "events_prune",
    "notification_deliver",
    "notification_payload",
    "notification_retry_delay",
    "notification_target_create",
    "notification_target_delete",
    "notification_target_update",
    "notifications_requeue_stale",
]
