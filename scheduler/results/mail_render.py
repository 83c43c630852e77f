"""The mail of one outbox event: ``render`` turns an outbox entry's fields into an ``EmailMessage`` with
an HTML body and a plain-text alternative, every value cleaned for the header or the page it lands in
(one recipient, no line breaks in headers, escaped HTML, http(s) links only)."""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from email.message import EmailMessage
from email.utils import formatdate, getaddresses
from typing import Final
from urllib.parse import urlsplit

KINDS: Final = frozenset({"new_item", "price_drop"})
DEFAULT_FROM: Final = "goodshunter-scheduler@localhost"
MESSAGE_ID_DOMAIN: Final = "goodshunter-scheduler"
SUBJECT_TITLE_MAX: Final = 120


def render(fields: Mapping[str, str], entry_id: str, from_email: str = "") -> EmailMessage:
    """The mail of one outbox entry: an HTML body with a plain-text alternative.

    The Message-ID derives from the entry id and task id only, so a re-sent event carries the same one.
    Raises ValueError on an entry that cannot make a mail (unknown ``kind``, no usable ``to``).
    """
    kind = fields.get("kind", "")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    to = _recipient(fields.get("to", ""))
    task_id = fields.get("task_id", "")
    title = one_line(fields.get("title", "")) or "(untitled)"
    keyword = one_line(fields.get("keyword", ""))
    price = _yen(fields.get("price", ""))
    drop = kind == "price_drop"
    old_price = _yen(fields.get("old_price", "")) if drop else ""
    image_url = _web_url(fields.get("image_url", ""))
    item_url = _web_url(fields.get("item_url", ""))

    short = title if len(title) <= SUBJECT_TITLE_MAX else title[: SUBJECT_TITLE_MAX - 1] + "…"
    heading = "Price drop" if drop else "New item"
    subject = f"[GoodsHunter] {heading}: {short}" + (f" {old_price} → {price}" if drop else "")

    message = EmailMessage()
    message["Subject"] = subject
    message["From"] = from_email or DEFAULT_FROM
    message["To"] = to
    message["Date"] = formatdate(localtime=True)
    message["Message-ID"] = f"<{_token(entry_id)}.{_token(task_id) or 'notask'}@{MESSAGE_ID_DOMAIN}>"
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies to a robot
    price_text = f"{old_price} → {price}" if drop else price
    lines = [f"{heading} for your GoodsHunter task “{keyword}”:", "", title, f"Price: {price_text}"]
    if item_url:
        lines.append(item_url)
    message.set_content("\n".join(lines) + "\n")
    message.add_alternative(
        _html(heading, title, keyword, task_id, price, old_price, image_url, item_url), subtype="html"
    )
    return message


def _html(
    heading: str,
    title: str,
    keyword: str,
    task_id: str,
    price: str,
    old_price: str,
    image_url: str,
    item_url: str,
) -> str:
    e = html.escape
    prices = (
        f"<s>{e(old_price)}</s> → <strong>{e(price)}</strong>"
        if old_price
        else f"<strong>{e(price)}</strong>"
    )
    parts = [
        "<!DOCTYPE html>",
        '<html><body style="font-family: sans-serif">',
        f"<h2>{e(heading)}</h2>",
        f"<p><strong>{e(title)}</strong></p>",
        f"<p>Price: {prices}</p>",
    ]
    if image_url:
        parts.append(f'<p><img src="{e(image_url)}" alt="{e(title)}" style="max-width: 320px"></p>')
    if item_url:
        parts.append(f'<p><a href="{e(item_url)}">View the item</a></p>')
    parts.append(f'<p style="color: #666">Task: {e(keyword)} (#{e(task_id)})</p>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _recipient(raw: str) -> str:
    """One address, as the To header; no line breaks (header injection), no lists."""
    if "\r" in raw or "\n" in raw:
        raise ValueError("recipient contains a line break")
    found = getaddresses([raw])
    if len(found) != 1 or "@" not in found[0][1] or any(c.isspace() for c in found[0][1]):
        raise ValueError("recipient is not one e-mail address")
    return raw.strip()


def one_line(value: str) -> str:
    return " ".join(value.split())


def _yen(raw: str) -> str:
    text = one_line(raw)
    return f"¥{int(text):,}" if text.isdigit() else (f"¥{text}" if text else "¥?")


def _web_url(raw: str) -> str:
    """``raw`` when it is an http(s) URL, else "" (no javascript: or data: links in a mail)."""
    url = raw.strip()
    try:
        parts = urlsplit(url)
    except ValueError:
        return ""
    return url if parts.scheme in ("http", "https") and parts.netloc and url.isprintable() else ""


def _token(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "", value)
