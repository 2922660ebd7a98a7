"""Reads of provisioning: ``boxes`` (box lists as people see them), ``configuration`` (the box's
configuration document, the server peers document), ``infrastructure`` (capacity, pool usage)."""
