"""The Ray Serve HTTP application in front of the provider actors."""
