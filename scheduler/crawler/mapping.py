"""Task specs to FetchRequests and crawled items to plain dicts: the one place that knows the proto's
enum numbers (the contract's names on our side, the crawler's numbers on the wire)."""

from __future__ import annotations

from scheduler._proto import crawler_pb2
from scheduler.tasks.registry import TaskSpec

PLATFORMS = {
    "mercari": crawler_pb2.PLATFORM_MERCARI,
    "yahoo_auction": crawler_pb2.PLATFORM_YAHOO_AUCTION,
}
SORTS = {
    "created_time": crawler_pb2.SORT_BY_CREATED_TIME,
    "price": crawler_pb2.SORT_BY_PRICE,
    "score": crawler_pb2.SORT_BY_SCORE,
    "num_likes": crawler_pb2.SORT_BY_NUM_LIKES,
}
ORDERS = {"desc": crawler_pb2.SORT_ORDER_DESC, "asc": crawler_pb2.SORT_ORDER_ASC}
PLATFORM_NAMES = {value: name for name, value in PLATFORMS.items()}


def build_request(spec: TaskSpec) -> crawler_pb2.FetchRequest:
    return crawler_pb2.FetchRequest(
        task_id=str(spec.task_id),
        platform=PLATFORMS[spec.platform],
        keyword=spec.keyword,
        min_price=spec.min_price,
        max_price=spec.max_price,
        exclude_keywords=list(spec.exclude_keywords),
        only_on_sale=spec.only_on_sale,
        limit=spec.limit,
        sort=SORTS[spec.sort],
        order=ORDERS[spec.order],
    )


def item_dict(item: crawler_pb2.Item) -> dict[str, object]:
    return {
        "source_id": item.source_id,
        "title": item.title,
        "price": item.price,
        "image_url": item.image_url,
        "item_url": item.item_url,
        "platform": PLATFORM_NAMES.get(item.platform, "unspecified"),
        "status": item.status,
        "currency": item.currency,
    }
