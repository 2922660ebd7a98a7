"""Writes for the monitoring app: the event timeline, alert rules and targets, alert evaluation and
notification deliveries. Other apps import from here (``fleet.monitoring.services.event_record``)."""

from fleet.monitoring.services.alerts import alert_rule_evaluate, alerts_evaluate
from fleet.monitoring.services.events import event_payload, event_record, events_prune, events_record_batch
from fleet.monitoring.services.notifications import (
    MAX_ATTEMPTS,
    DeliveryOutcome,
    notification_deliver,
    notification_payload,
    notification_retry_delay,
    notifications_requeue_stale,
)
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
    "alert_rule_create",
    "alert_rule_delete",
    "alert_rule_evaluate",
    "alert_rule_update",
    "alerts_evaluate",
    "event_payload",
    "event_record",
    "events_prune",
    "events_record_batch",
    "notification_deliver",
    "notification_payload",
    "notification_retry_delay",
    "notification_target_create",
    "notification_target_delete",
    "notification_target_update",
    "notifications_requeue_stale",
]
