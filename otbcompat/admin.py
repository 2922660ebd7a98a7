from django.contrib import admin

from otbcompat.models import OtbDevice


@admin.register(OtbDevice)
class OtbDeviceAdmin(admin.ModelAdmin):
    list_display = ("id", "board", "mac", "source_ip", "created_at", "revoked_at")
    search_fields = ("id", "mac", "board")
    readonly_fields = ("token_hash", "jwt_generation")
