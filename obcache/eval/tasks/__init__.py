"""The four tasks of `obcache eval`: passkey, fidelity, perplexity, perturbation."""
