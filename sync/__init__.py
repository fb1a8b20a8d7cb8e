"""MQTT sync with the shop: the outbox relay, inbound updates, and the reference hub.

See ``docs/sync.md`` for the design and ``docs/asyncapi.yaml`` for the contract.
Nothing here does I/O at import time.
"""
