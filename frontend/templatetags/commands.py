"""A command's result on a page: ``{{ command|command_view:labels }}`` (see ``frontend.command_output``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django import template

from frontend.command_output import CommandView
from frontend.command_output import command_view as view_of

register = template.Library()


@register.filter
def command_view(command: Any, labels: Mapping[str, str] | None = None) -> CommandView:
    return view_of(command, labels)
