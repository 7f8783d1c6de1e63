"""The dashboard (`pheanq web`) and the metrics endpoint (`pheanq metrics`): an ASGI application over the ops room,
which a server of its own runs or an existing application mounts."""
