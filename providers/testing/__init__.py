"""Loopback fakes of the providers' servers, for tests and benchmarks.

Real HTTP servers on 127.0.0.1 that speak each provider's wire format
(:mod:`providers.testing.fake_llm`, its dialects in
:mod:`providers.testing.dialects`), enforce a provider's rate limits
(:mod:`providers.testing.rate_limits`), answer the plateau job's prompts
(:mod:`providers.testing.plateau_backend`), and record what reached them
(:mod:`providers.testing.probe_server`). Part of the package so that the
benchmarks, the tests and a user's own tests share one copy.
"""
