"""CRM contacts used as documented: a call from a contact's number shows the contact's name on the employee's
phone, in the CDR and in the events, whatever format the provider sends the number in; a click-to-call to
a contact by name dials its stored post-dial digits. Over loopback."""

from __future__ import annotations

import asyncio

import attrs
import pytest
import test_crm_calls
from harness import answered, ended, event_of
from phones import sdp
from test_crm_calls import CLIENT, Office, events_in, wait_until
from test_flows import DIRECT, office

from durchwahl.media.dtmf_rfc4733 import parse_telephone_event
from durchwahl.routing.cdr import Disposition, InMemoryCdrStore
from durchwahl.routing.directory import CrmContact, ExternalNumber
from durchwahl.routing.events import CallStarted
from durchwahl.routing.resolver import Resolver
from durchwahl.sipcore.session import Confirmed

crm_office = test_crm_calls.office  # the fixture of the CRM tests: a trunk that answers calls out
__all__ = ["crm_office", "office"]
pytestmark = pytest.mark.virtual_time  # the harness: a memory network and a virtual clock


@pytest.mark.parametrize("spelling", ["+4989123456", "004989123456", "089123456", "4989123456"])
async def test_a_call_from_a_crm_number_shows_the_contacts_name(
    office: test_crm_calls.Office, spelling: str
) -> None:
    directory = office.b2bua.directory
    contact = CrmContact("Kunde GmbH", ExternalNumber("+4989123456"))
    directory = attrs.evolve(directory, crm=(contact,))
    office.b2bua.directory, office.b2bua.resolver = directory, Resolver(directory)
    office.b2bua.cdr = records = InMemoryCdrStore()
    facts: list[object] = []
    office.b2bua.on_event = facts.append
    anna = await office.phone("101")
    provider = office.provider
    call = provider.ua.invite(
        f"sip:{DIRECT}@office.example",
        provider.endpoint.flow_to("127.0.0.1", provider.server_port),
        from_=f"<sip:{spelling}@provider.example>",
        to=f"<sip:{DIRECT}@office.example>",
        body=sdp("provider", 42010),
    )
    leg = await anna.next_call()
    assert leg.request.from_.display_name == "Kunde GmbH"
    await event_of(leg, Confirmed)
    await answered(call)
    call.bye()
    await ended(leg)
    await office.idle()
    (record,) = records.records
    assert record.caller_name == "Kunde GmbH" and record.disposition is Disposition.ANSWERED
    (started,) = [f for f in facts if isinstance(f, CallStarted)]
    assert started.caller_name == "Kunde GmbH"


async def test_a_click_to_call_to_a_contact_dials_its_post_dial_digits(crm_office: Office) -> None:
    anna, _ = await crm_office.anna()
    provider = crm_office.provider
    assert provider.rtp is not None
    statuses: list[tuple[int, str]] = []
    task = asyncio.create_task(
        crm_office.b2bua.originate_contact(
            "101", "kunde gmbh, durchwahl 105", on_status=lambda *s: statuses.append(s)
        )
    )
    async with asyncio.timeout(3):
        leg = await anna.calls.get()
    client = await provider.next_call()
    assert str(client.request.uri).startswith(f"sip:{CLIENT}@")
    await event_of(client, Confirmed)
    rtp = provider.rtp

    def ended_events() -> set[int]:
        return {
            p.timestamp for p in rtp.packets if p.payload_type == 101 and parse_telephone_event(p.payload).end
        }

    await wait_until(lambda: len(ended_events()) == 3)
    assert events_in(rtp.packets) == "105"
    leg.bye()
    record = await asyncio.wait_for(task, 5)
    assert record.dialled == "+49891234567;105" and record.disposition is Disposition.ANSWERED
    assert statuses[0][0] == 180


async def test_a_click_to_call_to_an_unknown_contact_is_refused(crm_office: Office) -> None:
    statuses: list[tuple[int, str]] = []
    record = await crm_office.b2bua.originate_contact(
        "101", "Nobody", on_status=lambda *s: statuses.append(s)
    )
    assert record.status == 404 and statuses == [(404, "no CRM contact is named 'Nobody'")]
