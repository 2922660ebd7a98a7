from django.urls import path

from fleet.commands import apis

urlpatterns = [
    path("agent/speedtest", apis.AgentSpeedtestApi.as_view(), name="agent-speedtest"),
    path("boxes/<str:box_id>/commands/", apis.BoxCommandListApi.as_view(), name="box-commands"),
    path("commands/<str:command_id>/", apis.CommandDetailApi.as_view(), name="command-detail"),
    path("commands/<str:command_id>/cancel", apis.CommandCancelApi.as_view(), name="command-cancel"),
]
