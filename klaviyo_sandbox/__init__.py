"""A local Klaviyo: the API slice returnsync uses, with Klaviyo's validation, rate limits,
consent refusal and injectable faults, plus /_sandbox/ endpoints to inspect what arrived."""

from klaviyo_sandbox.server import SandboxServer, serve

__all__ = ["SandboxServer", "serve"]
