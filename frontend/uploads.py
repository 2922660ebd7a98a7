"""Uploads of firmware images from the console: streamed to a temporary file, never held in memory,
and cut off past the size limit while they arrive."""

from __future__ import annotations

from typing import Any

from django.core.files.uploadhandler import FileUploadHandler, StopUpload, TemporaryFileUploadHandler
from django.http import HttpRequest


class UploadSizeLimit(FileUploadHandler):
    """First handler of the chain: counts the bytes of the file parts and stops the upload past
    ``limit`` (``exceeded`` then says so). The rest of the body is read and dropped, not stored, so
    the browser still gets the page with the error; fields after the file are lost, so forms put
    the file last."""

    def __init__(self, request: HttpRequest, limit: int) -> None:
        super().__init__(request)
        self.limit = limit
        self.received = 0
        self.exceeded = False

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes:
        self.received += len(raw_data)
        if self.received > self.limit:
            self.exceeded = True
            raise StopUpload(connection_reset=False)
        return raw_data

    def file_complete(self, file_size: int) -> Any:
        return None


def limit_uploads(request: HttpRequest, limit: int) -> UploadSizeLimit:
    """Make ``request`` stream its files to disk and stop past ``limit`` bytes; call it before
    anything reads ``request.POST`` (so the view is ``csrf_exempt`` outside, ``csrf_protect``
    inside: the CSRF check reads the body)."""
    guard = UploadSizeLimit(request, limit)
    request.upload_handlers = [guard, TemporaryFileUploadHandler(request)]
    return guard
