"""What a stock OverTheBox box reports over /1.0 (issue #13 item 5): events, properties, metrics and
diagnostics, mapped onto our timeline, WAN links, telemetry pipeline and commands.

One module per report: ``events``, ``properties``, ``metrics``, ``diagnostics``; ``firmware`` (the
version the box reports on every call), ``links`` (the WAN link rows both events and properties
move), ``fields`` (the bounded readers every body goes through: a bad value is a 400 naming it,
before anything is written). docs/otb-protocol.md, "Telemetry", says how each maps.
"""
