"""The /1.0 routes of firmware for stock OverTheBox boxes (mounted under /1.0/ by config/urls.py,
beside otbcompat's): exact paths, no trailing slash."""

from django.urls import path

from fleet.firmware import otb

urlpatterns = [
    path("devices/<str:device_id>/release_channel", otb.release_channel, name="otb-release-channel"),
    path("firmware/<str:token>/<str:filename>", otb.otb_firmware_download, name="otb-firmware-download"),
]
