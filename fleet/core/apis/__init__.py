"""REST endpoints of the fleet app (mounted at /api/v1/): the agent's, people's and boxes'."""
