from django.apps import AppConfig


class CommandsConfig(AppConfig):
    name = "fleet.commands"
    label = "commands"
    verbose_name = "Box commands"
    default_auto_field = "django.db.models.BigAutoField"
