"""Calls a served Mercato through a client generated from its own /openapi.json
(scripts/check-contract), as an SDK user would. Each call that takes query
parameters asserts something only a server that received them answers, so a
parameter the document places anywhere but the query (where a generated client
then puts it) fails here, and so does a call the generator could not make.

    python client_check.py CLIENT_DIR BASE_URL ADMIN_TOKEN
"""

import datetime
import sys
import uuid

client_dir, base_url, admin_token = sys.argv[1:4]
sys.path.insert(0, client_dir)

from mercato_client import AuthenticatedClient, Client  # noqa: E402
from mercato_client.api.analytics import get_report  # noqa: E402
from mercato_client.api.default import (  # noqa: E402
    list_products,
    post_merchant,
    post_product,
    post_reservation,
    put_inventory,
)
from mercato_client.api.events import list_events  # noqa: E402
from mercato_client.api.pricing import get_rules, put_rules  # noqa: E402
from mercato_client.api.remediation import choice_page  # noqa: E402
from mercato_client.models import (  # noqa: E402
    Choice,
    CreateMerchant,
    CreateProductBody,
    CreateReservation,
    ItemBody,
    Money,
    PutInventory,
    RulesBody,
    Strategy,
    VariantBody,
)


def answer(response, status):
    assert response.status_code == status, (
        f"expected {status}, got {response.status_code}: {response.content[:500]!r}"
    )
    return response.parsed


def check(name, condition, detail=""):
    assert condition, f"{name}: {detail}"
    print(f"  ok  {name}")


# A merchant of its own, so every answer below is known in full.
admin = AuthenticatedClient(base_url=base_url, token=admin_token)
slug = f"contract-{uuid.uuid4().hex[:12]}"
merchant = answer(
    post_merchant.sync_detailed(client=admin, body=CreateMerchant(name="Contract check", slug=slug)),
    201,
)
shop = AuthenticatedClient(base_url=base_url, token=merchant.api_key)

names = ["Contract mug", "Contract cup", "Contract jug"]
for i, name in enumerate(names):
    variant = VariantBody(sku=f"CC-{i}", price=Money(amount=1000 + i, currency="EUR"))
    answer(post_product.sync_detailed(client=shop, body=CreateProductBody(name=name, variants=[variant])), 201)

# limit and cursor: two pages of a list of three.
first = answer(list_products.sync_detailed(client=shop, limit=2), 200)
check("GET /v1/products?limit=2 answers two", [p.name for p in first.data] == names[:2], first.data)
check("... and a cursor", isinstance(first.next_cursor, str) and first.next_cursor, first.next_cursor)
second = answer(list_products.sync_detailed(client=shop, limit=2, cursor=first.next_cursor), 200)
check("GET /v1/products?cursor= answers the rest", [p.name for p in second.data] == names[2:], second.data)
check("... and no further cursor", not second.next_cursor, second.next_cursor)

# type: the three products made events of one type and none of another.
created = answer(list_events.sync_detailed(client=shop, type_="product.created", limit=2), 200)
check(
    "GET /v1/events?type=product.created&limit=2",
    len(created.data) == 2 and all(e.type_ == "product.created" for e in created.data),
    [e.type_ for e in created.data],
)
confirmed = answer(list_events.sync_detailed(client=shop, type_="order.confirmed"), 200)
check("GET /v1/events?type=order.confirmed is empty", confirmed.data == [], [e.type_ for e in confirmed.data])

# from, to and group_by: the answer names the range and grouping it was asked.
start, end = datetime.date(2026, 1, 1), datetime.date(2026, 1, 31)
report = answer(get_report.sync_detailed("revenue", client=shop, from_=start, to=end, group_by="week"), 200)
check(
    "GET /v1/analytics/revenue?from=&to=&group_by=week",
    (report.report, report.from_, report.to, report.group_by) == ("revenue", start, end, "week"),
    report.to_dict(),
)

# activate=false records a revision without putting it in force: after one
# put in force (the default), the next with activate=false leaves it there.
def rules(percent_off):
    rule = {"id": "summer", "priority": 10, "stackable": False, "when": {"promo_code": "SUMMER"}}
    return RulesBody.from_dict({"rules": [{**rule, "then": {"percent_off": percent_off}}]})


live = answer(put_rules.sync_detailed(client=shop, body=rules(10)), 200)
recorded = answer(put_rules.sync_detailed(client=shop, body=rules(20), activate=False), 200)
in_force = answer(get_rules.sync_detailed(client=shop), 200)
check(
    "PUT /v1/pricing/rules?activate=false leaves the rules in force",
    (live.revision, recorded.revision, in_force.revision) == (1, 2, 1),
    (live.revision, recorded.revision, in_force.revision),
)

# strategy: a reservation with the strategy given for this request.
answer(put_inventory.sync_detailed("CC-0", client=shop, body=PutInventory(on_hand=5)), 200)
reservation = answer(
    post_reservation.sync_detailed(
        client=shop,
        body=CreateReservation(items=[ItemBody(sku="CC-0", quantity=2)]),
        strategy=Strategy.OPTIMISTIC,
    ),
    201,
)
check("POST /v1/reservations?strategy=optimistic", reservation.status.value == "active", reservation.status)

# token and choice on a public link page, with no credentials.
public = Client(base_url=base_url)
page = answer(
    choice_page.sync_detailed(str(uuid.uuid4()), client=public, token="tok-contract", choice=Choice.CREDIT),
    200,
)
check(
    "GET /v1/adjustments/{id}/choice?token=&choice=credit",
    '"tok-contract"' in page and 'choice:"credit"' in page,
    page[-400:],
)
