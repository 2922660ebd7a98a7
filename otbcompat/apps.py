from django.apps import AppConfig


class OtbCompatConfig(AppConfig):
    name = "otbcompat"
    label = "otbcompat"
    verbose_name = "OverTheBox device protocol (/1.0)"
    default_auto_field = "django.db.models.BigAutoField"
