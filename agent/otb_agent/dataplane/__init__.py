"""The box's data plane (issue #12): :mod:`.plan` turns a config and the observed WANs into a plan,
:mod:`.linux` converges a Linux host to it and follows the WANs (``otb-agent run --apply linux``).
The OpenWrt hook applies the same plan (``otb-agent plan``). docs/data-plane.md, "Box"."""

#: The WireGuard interface the box's data plane creates (the data-plane contract's name).
TUNNEL_INTERFACE = "otb0"
