"""The kiosk UI: the local HTTP/WebSocket API under ``/api/v1`` and the static screens it serves."""
