"""Kubernetes: manifests for an app (:mod:`.manifests`), their schema check (:mod:`.validate`)
and a backend that drives a cluster's API (:mod:`.backend`)."""
