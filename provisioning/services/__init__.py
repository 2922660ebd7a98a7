"""Every write of provisioning, by concern:

- ``infrastructure``: regions, aggregation servers, address pools, release of quarantined addresses;
- ``inventory``: the factory data of boxes, imported before any is enrolled;
- ``enrollment``: an agent proves who it is and gets its credential;
- ``lifecycle``: claim and provisioning, release, revocation, unclaim, transfer, decommission,
  reassignment (the legal moves are ``provisioning.box_states``);
- ``configuration``: the settings a customer edits, the desired config hash, what the box applied.

Each public function is named ``<entity>_<action>``, takes keyword-only typed arguments, runs in one
transaction, audits the change and raises ``fleet.core.errors`` on refusal.
"""
