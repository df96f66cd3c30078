"""A local stand-in for Azure Resource Manager; start it with :class:`sandbox.arm.server.ArmServer`.

Modules: ``server`` (HTTP, routing, auth, api-versions, hooks), ``provider`` (the contract for
resource-provider modules), ``network``/``network_rules`` and ``compute`` (the providers),
``lro`` (long-running operations), ``faults`` (fault injection, throttling, request log),
``state`` (the in-memory subscription and seeds), ``tls`` (certificates), ``errors``, and
``testing`` (an SDK credential and clients aimed at the stand-in).
"""
