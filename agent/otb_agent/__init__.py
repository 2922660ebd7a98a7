"""OTB on-box agent (stdlib + websockets only; never imports the server)."""

__version__ = "0.1.0"
