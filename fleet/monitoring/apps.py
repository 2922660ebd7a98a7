from django.apps import AppConfig


class MonitoringConfig(AppConfig):
    name = "fleet.monitoring"
    label = "monitoring"
    verbose_name = "Events, alerts and notifications"
    default_auto_field = "django.db.models.BigAutoField"
