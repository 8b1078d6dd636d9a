"""How the gateway is served: uvicorn's options and the HTTP protocol bounding each connection."""
