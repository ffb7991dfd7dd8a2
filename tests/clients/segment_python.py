"""Sends identify, track, page and a gzip batch to Rekindle with Segment's official Python
library, unmodified but for the host. Exits non-zero if the library reports an error."""

import os
import sys
from datetime import datetime, timezone

import segment.analytics as analytics

errors = []
analytics.write_key = os.environ["REKINDLE_WRITE_KEY"]
analytics.host = os.environ["REKINDLE_HOST"]
analytics.sync_mode = True
analytics.on_error = lambda error, items: errors.append(repr(error))

analytics.identify(
    "py-user",
    {"first_name": "Py", "email": "Py@Example.com"},
    anonymous_id="py-anon",
    context={"timezone": "Europe/Berlin", "consent": {"categoryPreferences": {"email": True}}},
)
analytics.track(
    "py-user",
    "Order Completed",
    {"revenue": 25.5, "products": [{"sku": "s1", "category": "shoes"}]},
    timestamp=datetime(2026, 1, 1, tzinfo=timezone.utc),
)
analytics.page("py-user", "Shop", "Home", {"url": "https://shop.example/"})

analytics.gzip = True
analytics.track(
    "py-user",
    "Order Completed",
    {"total": 10, "products": [{"sku": "s2", "category": "shoes"}]},
    timestamp=datetime(2026, 3, 2, tzinfo=timezone.utc),
)
analytics.flush()

if errors:
    print("\n".join(errors), file=sys.stderr)
    sys.exit(1)
print("sent")
