"""raygate's deployments (``deploy/kuberay``) and their offline checks (:mod:`deploy.check`)."""
