"""A fake GoodsHunter crawler: a real gRPC server with scripted behaviour, for tests and the demo."""
