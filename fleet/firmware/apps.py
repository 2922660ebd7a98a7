from django.apps import AppConfig


class FirmwareConfig(AppConfig):
    name = "fleet.firmware"
    label = "firmware"
    verbose_name = "Firmware and rollouts"
    default_auto_field = "django.db.models.BigAutoField"
