from django.apps import AppConfig

from provisioning.signals import box_device_credentials_revoked


class OtbCompatConfig(AppConfig):
    name = "otbcompat"
    label = "otbcompat"
    verbose_name = "OverTheBox device protocol (/1.0)"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from otbcompat import receivers  # noqa: PLC0415 (it imports models: loaded only by now)

        box_device_credentials_revoked.connect(
            receivers.box_device_credentials_revoked, dispatch_uid="otbcompat.box_device_revoke"
        )
