"""Page views of the customer portal (``portal``, ``box``, ``organization``) and the support
console (``console``). Each view parses input, calls one service or selector, and renders."""
