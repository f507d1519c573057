"""Online serving: a BentoML champion/challenger service, its routing, rollout state, prediction log and packaging."""
