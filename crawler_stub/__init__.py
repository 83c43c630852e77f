"""A fake GoodsHunter crawler: a real gRPC server with scripted behaviour, for tests and the demo."""

from crawler_stub.server import CrawlerStub
from crawler_stub.service import Call

__all__ = ["Call", "CrawlerStub"]
